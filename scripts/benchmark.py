"""Speed of the bundle against its model-only ceiling, measured in one run on one machine.

    python -m scripts.benchmark --out runs/benchmark              # full sizes (a GPU: through the device tool)
    python -m scripts.benchmark --out runs/benchmark --smoke      # tiny sizes, runs anywhere in a minute or two

Writes ``benchmark.json`` and ``benchmark.md`` (a table) to ``--out`` and prints the table:

* training: the model-only step (random tensors already on the device; the network, loss, optimiser, batch,
  precision, memory format and compile setting of ``configs/train.json``) against the bundle's own training loop
  from DICOM files on disk (the train.json pipeline: decode, mask, cache, augment, load), both after warm-up:
  images/s, the ratio pipeline / ceiling, peak GPU memory, data-loader wait per step; plus the plain AMP fp16 step
  (contiguous, no compile) as the reference the defaults are compared with;
* inference: model-only sliding-window images/s on full-size images against ``configs/inference.json`` over a
  folder of JPEG-Baseline DICOMs (every output written), with and without flip TTA;
* the data pipeline alone, per CPU core: decode, label, the loader's crop and parameter draw, the textbook MONAI
  CPU augmentation chain for comparison, and the on-device augmentation per image;
* the inference writer: engine-thread ms per image with the files written in that thread and in writer processes;
* RLE: ms per mask for ``scripts.rle`` encode/decode against a per-pixel loop.

Data comes from ``scripts.synthetic`` (generated into ``--out/data`` unless ``--data`` names a SIIM folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import torch

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def _calls_per_second(fn, calls: int, device: torch.device) -> float:
    """Calls of ``fn`` per second on ``device``, after one untimed warm-up call."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return calls / (time.perf_counter() - start)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _parser(config: str, overrides: dict) -> "ConfigParser":  # noqa: F821
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / config))
    parser["bundle_root"] = str(REPO)
    for key, value in overrides.items():
        parser[key] = value
    return parser


# ----------------------------------------------------------------------------------------------------- training
def model_step_ceiling(args, overrides: dict, amp: bool | None = None, channels_last: bool | None = None, compile_: bool | None = None) -> dict:
    """Images/s of forward + backward + step on random tensors already on the device."""
    from scripts.flags import as_flag

    parser = _parser("train.json", overrides)
    device = parser.get_parsed_content("device")
    if amp is None:  # the bundle's defaults
        amp, dtype = as_flag(parser.get_parsed_content("amp")), parser.get_parsed_content("amp_dtype")
    else:  # the plain reference: AMP fp16 with a grad scaler
        dtype = torch.float16
    channels_last = as_flag(parser["channels_last"]) if channels_last is None else channels_last
    compile_ = as_flag(parser["compile"]) if compile_ is None else compile_
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    network = parser.get_parsed_content("network_def").to(device, memory_format=memory_format)
    loss_fn = parser.get_parsed_content("loss")
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda") if amp and device.type == "cuda" and dtype == torch.float16 else None
    step_fn = torch.compile(network) if compile_ else network
    x = torch.rand(args.batch, 1, args.crop, args.crop, device=device).to(memory_format=memory_format)
    y = (torch.rand(args.batch, 1, args.crop, args.crop, device=device) > 0.9).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=bool(amp) and device.type == "cuda"):
            loss = loss_fn(step_fn(x), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    start = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - start
    for _ in range(args.warmup - 1):
        step()
    _sync(device)
    _reset_peak(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "images_per_s": round(args.steps * args.batch / seconds, 2),
        "first_step_s": round(first, 2),
        "peak_gib": _peak_gib(device),
        "amp": bool(amp) and device.type == "cuda",
        "dtype": str(dtype).replace("torch.", "") if bool(amp) and device.type == "cuda" else "float32",
        "channels_last": bool(channels_last),
        "compile": bool(compile_),
    }


def training_pipeline(args, overrides: dict, data_dir: Path, work: Path) -> dict:
    """Images/s of the bundle's own training loop (train.json), after warm-up, and the data-loader wait."""
    from ignite.engine import Events

    n_iterations = args.warmup + args.steps
    parser = _parser(
        "train.json",
        {
            **overrides,
            "dataset_dir": str(data_dir),
            "output_dir": str(work / "train"),
            "ckpt_dir": str(work / "models"),
            "max_epochs": 1,
            "val_interval": 10**6,
            "epoch_samples": n_iterations * args.batch,
        },
    )
    start = time.perf_counter()
    parser.get_parsed_content("initialize")  # output folder, determinism, early-stop wiring: builds the trainer
    trainer = parser.get_parsed_content("train#trainer")
    cache_seconds = time.perf_counter() - start  # mostly filling the cache of deterministic transforms
    device = parser.get_parsed_content("device")
    stamps: list[float] = []
    waits: list[float] = []
    fetch_started = [0.0]

    @trainer.on(Events.GET_BATCH_STARTED)
    def _fetch(_):
        fetch_started[0] = time.perf_counter()

    @trainer.on(Events.GET_BATCH_COMPLETED)
    def _fetched(_):
        waits.append(time.perf_counter() - fetch_started[0])

    @trainer.on(Events.ITERATION_COMPLETED)
    def _done(engine):
        _sync(device)
        stamps.append(time.perf_counter())
        if engine.state.iteration == args.warmup:
            _reset_peak(device)

    trainer.run()
    timed = stamps[args.warmup :]
    seconds = timed[-1] - stamps[args.warmup - 1]
    return {
        "images_per_s": round(len(timed) * args.batch / seconds, 2),
        "data_wait_ms_per_step": round(1000 * float(np.mean(waits[args.warmup :])), 1),
        "peak_gib": _peak_gib(device),
        "cache_fill_s": round(cache_seconds, 1),
        "num_workers": parser.get_parsed_content("num_workers"),
        "steps_timed": len(timed),
    }


# ---------------------------------------------------------------------------------------------------- inference
def inference_model_only(args, overrides: dict, checkpoint: Path, tta: bool) -> dict:
    """Images/s of sliding-window inference on full-size random images already on the device (no I/O)."""
    parser = _parser("inference.json", {**overrides, "checkpoints": [str(checkpoint)], "tta": tta})
    device = parser.get_parsed_content("device")
    network = parser.get_parsed_content("network")
    inferer = parser.get_parsed_content("inferer")
    amp = parser.get_parsed_content("amp")
    dtype = parser.get_parsed_content("amp_dtype")
    memory_format = parser.get_parsed_content("memory_format")
    x = torch.rand(1, 1, args.size, args.size, device=device).to(memory_format=memory_format)

    def once() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=bool(amp) and device.type == "cuda"):
            torch.sigmoid(inferer(x, network))

    return {"images_per_s": round(_calls_per_second(once, args.infer_images, device), 3), "tta": tta}


def inference_pipeline(overrides: dict, data_dir: Path, checkpoint: Path, out: Path, tta: bool) -> dict:
    """Images/s of configs/inference.json over the test folder, every output written."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(REPO / "configs" / "inference.json"),
        meta_file=str(REPO / "configs" / "metadata.json"),
        workflow_type="infer",
        bundle_root=str(REPO),
        dataset_dir=str(data_dir / "dicom-images-test"),
        output_dir=str(out),
        checkpoints=[str(checkpoint)],
        tta=tta,
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    summary = json.loads((out / "summary.json").read_text())
    return {
        "images_per_s": summary["images_per_second"],
        "seconds_per_image": summary["seconds_per_image"],
        "images": summary["processed"],
        "tta": tta,
    }


# ------------------------------------------------------------------------------------------------ data pipeline
def reference_cpu_augmentation(crop: int) -> list:
    """The textbook MONAI chain the bundle's split augmentation replaced, all on the CPU (for comparison only)."""
    from monai.transforms import (
        RandAdjustContrastd,
        RandAffined,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandGaussianNoised,
        RandGridDistortiond,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    from scripts.transforms import Uint8ToFloatd

    both, size = ["image", "label"], [crop, crop]
    return [
        RandCropByPosNegLabeld(both, "label", size, pos=2, neg=1, num_samples=1, allow_smaller=True),
        SpatialPadd(both, size),
        Uint8ToFloatd("image"),
        RandFlipd(both, prob=0.5, spatial_axis=0),
        RandAffined(both, prob=0.5, rotate_range=0.17, scale_range=[0.1, 0.1], translate_range=[16, 16], mode=["bilinear", "nearest"]),
        RandGridDistortiond(both, prob=0.2, num_cells=5, distort_limit=(-0.1, 0.1), mode=["bilinear", "nearest"]),
        RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5)),
        RandScaleIntensityd("image", prob=0.3, factors=0.15),
        RandShiftIntensityd("image", prob=0.3, offsets=0.08),
        RandGaussianNoised("image", prob=0.2, std=0.02),
    ]


def data_pipeline_per_core(args, overrides: dict, data_dir: Path) -> dict:
    """Images/s on one core for each stage of the training preprocessing, and of the on-device augmentation."""
    from monai.data import list_data_collate
    from monai.transforms import Compose

    from scripts.datalist import load_fold
    from scripts.transforms import unpack_mask

    torch.set_num_threads(1)
    items = load_fold(str(data_dir), fold=0)["training"][: args.pipeline_images]
    parser = _parser("train.json", overrides)
    deterministic = parser.get_parsed_content("train#deterministic_transforms")
    load, normalize_and_label = deterministic[:2], deterministic[2:]  # LoadImaged, EnsureChannelFirstd | the rest
    loader_part = Compose(parser.get_parsed_content("train#random_transforms"))
    reference = Compose(reference_cpu_augmentation(args.crop))

    def timed(stage, inputs):
        start = time.perf_counter()
        outputs = [stage(item) for item in inputs]
        speed = round(len(inputs) / (time.perf_counter() - start), 1)
        return [out[0] if isinstance(out, list) else out for out in outputs], speed

    results = {}
    decoded, results["decode"] = timed(Compose(load), [dict(item) for item in items])
    cached, results["normalise + label (cached once)"] = timed(Compose(normalize_and_label), decoded)
    crops, results["crop + draw parameters (loader)"] = timed(loader_part, cached)
    unpacked = [{**item, "label": unpack_mask(item["label"], item["image"].shape[-1])} for item in cached]
    _, results["MONAI chain on the CPU (reference)"] = timed(reference, unpacked)
    device = parser.get_parsed_content("device")
    prepare = parser.get_parsed_content("train#prepare_batch")
    batch = list_data_collate(crops[: args.batch])
    batches_per_s = _calls_per_second(lambda: prepare(batch, device, True), 3, device)
    results[f"augment on {device.type} (per image, batched)"] = round(batches_per_s * len(batch["image"]), 1)
    torch.set_num_threads(os.cpu_count() or 1)
    return results


def writer_cost(data_dir: Path, out: Path, n_images: int, workers: int) -> dict:
    """Milliseconds of the engine's thread per image that inference's writer takes, with every file written in that
    thread (``workers=0``) and handed to ``workers`` processes; each image positive (mask PNG, RLE, DICOM SEG)."""
    from monai.data import MetaTensor

    from scripts.dicom_folder import scan_dicom_inputs
    from scripts.inference_writer import InferenceWriter
    from scripts.synthetic_anatomy import render_case

    sources = scan_dicom_inputs(data_dir / "dicom-images-test").files[:n_images]
    items = []
    for i, source in enumerate(sources):
        header = pydicom.dcmread(source, stop_before_pixels=True)
        rows, cols = int(header.Rows), int(header.Columns)
        _, regions = render_case(np.random.default_rng(i), rows, cols, n_regions=2)
        mask = torch.from_numpy(np.ascontiguousarray(np.logical_or.reduce(regions).T[None], dtype=np.float32))
        meta = {"filename_or_obj": str(source), "SOPInstanceUID": str(header.SOPInstanceUID), "Rows": rows, "Columns": cols}
        items.append({"image": MetaTensor(mask.clone(), meta=meta), "pred": mask})
    results = {"images": len(items)}
    for count in (0, workers):
        writer = InferenceWriter(out / f"writer_{count}", workers=count)
        writer._open_pool()  # as at the engine's start: not timed
        start = time.perf_counter()
        for item in items:
            writer.write_item(item)
        handed = time.perf_counter() - start
        writer.finish()
        results[f"workers_{count}"] = {
            "engine_thread_ms_per_image": round(1000 * handed / len(items), 1),
            "all_written_ms_per_image": round(1000 * (time.perf_counter() - start) / len(items), 1),
        }
    return results


# ------------------------------------------------------------------------------------------------------------ RLE
def _loop_encode(mask: np.ndarray) -> str:
    """The straightforward reference: a Python walk over the pixels in column-major order."""
    rows, cols = mask.shape
    pairs, previous_end, start, position = [], 0, -1, 0
    for x in range(cols):
        for y in range(rows):
            if mask[y, x]:
                if start < 0:
                    start = position
            elif start >= 0:
                pairs += [start - previous_end, position - start]
                previous_end, start = position, -1
            position += 1
    if start >= 0:
        pairs += [start - previous_end, position - start]
    return " ".join(map(str, pairs)) if pairs else "-1"


def _loop_decode(encoded: str, rows: int, cols: int) -> np.ndarray:
    flat = np.zeros(rows * cols, dtype=bool)
    values = [int(v) for v in encoded.split()]
    position = 0
    for start, length in zip(values[0::2], values[1::2]):
        position += start
        for k in range(length):
            flat[position + k] = True
        position += length
    return flat.reshape(cols, rows).T


def rle_speed(size: int, repeats: int = 20) -> dict:
    from scripts import rle
    from scripts.synthetic_anatomy import render_case

    _, regions = render_case(np.random.default_rng(7), size, size, n_regions=3)
    mask = np.logical_or.reduce(regions)
    encoded = rle.encode(mask)

    def per_call(fn, n):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return 1000 * (time.perf_counter() - start) / n

    result = {
        "mask": f"{size}x{size}, {int(mask.sum())} px, {len(encoded.split()) // 2} runs",
        "encode_ms": round(per_call(lambda: rle.encode(mask), repeats), 3),
        "decode_ms": round(per_call(lambda: rle.decode(encoded, mask.shape), repeats), 3),
        "loop_encode_ms": round(per_call(lambda: _loop_encode(mask), 1), 1),
        "loop_decode_ms": round(per_call(lambda: _loop_decode(encoded, size, size), 1), 1),
    }
    if _loop_encode(mask) != encoded or not np.array_equal(_loop_decode(encoded, size, size), mask):
        raise AssertionError("the per-pixel reference disagrees with scripts.rle")
    return result


# ----------------------------------------------------------------------------------------------------- report
def _table(results: dict) -> str:
    train, infer = results["training"], results["inference"]
    lines = [
        f"Device: {results['device']}; torch {results['torch']}; {results['settings']}",
        "",
        "| measurement | images/s | ratio | notes |",
        "| --- | --- | --- | --- |",
        f"| training, model-only ceiling (bundle defaults) | {train['ceiling']['images_per_s']} | 1.00 | "
        f"{train['ceiling']['dtype']}, channels_last {train['ceiling']['channels_last']}, compile {train['ceiling']['compile']}, "
        f"peak {train['ceiling']['peak_gib']} GiB |",
        f"| training, plain AMP fp16 step (reference) | {train['plain_fp16']['images_per_s']} | "
        f"{train['defaults_vs_plain_fp16']:.2f} (defaults / this) | contiguous, no compile |",
        f"| training, bundle pipeline from DICOM | {train['pipeline']['images_per_s']} | {train['pipeline_vs_ceiling']:.2f} | "
        f"data wait {train['pipeline']['data_wait_ms_per_step']} ms/step, {train['pipeline']['num_workers']} workers, "
        f"peak {train['pipeline']['peak_gib']} GiB |",
    ]
    for key in ("no_tta", "tta"):
        lines.append(
            f"| inference {key.replace('_', ' ')}, model-only sliding window | {infer[key]['model_only']['images_per_s']} | 1.00 | |"
        )
        lines.append(
            f"| inference {key.replace('_', ' ')}, inference.json over DICOMs | {infer[key]['pipeline']['images_per_s']} | "
            f"{infer[key]['pipeline_vs_model']:.2f} | all outputs written, {infer[key]['pipeline']['seconds_per_image']} s/image |"
        )
    data = ", ".join(f"{name} {speed}" for name, speed in results["data_pipeline_per_core"].items())
    rle_, writer = results["rle"], results["writer"]
    pooled = next(key for key in writer if key.startswith("workers_") and key != "workers_0")
    lines += [
        "",
        f"Data pipeline, images/s (CPU stages on one core): {data}.",
        f"Inference writer, positive images (PNG + RLE + DICOM SEG), engine-thread ms per image: "
        f"{writer['workers_0']['engine_thread_ms_per_image']} writing in that thread, "
        f"{writer[pooled]['engine_thread_ms_per_image']} handing to {pooled.split('_')[1]} writer processes "
        f"(all written: {writer['workers_0']['all_written_ms_per_image']} / {writer[pooled]['all_written_ms_per_image']} ms per image).",
        f"RLE ({rle_['mask']}): encode {rle_['encode_ms']} ms, decode {rle_['decode_ms']} ms; per-pixel loop "
        f"{rle_['loop_encode_ms']} ms / {rle_['loop_decode_ms']} ms.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "runs" / "benchmark"))
    parser.add_argument("--data", default=None, help="a SIIM-layout folder (default: generate one)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs, measures little")
    parser.add_argument("--size", type=int, default=1024, help="image side")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--channels", default="32,64,128,256,512")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--n_images", type=int, default=64, help="training images generated")
    parser.add_argument("--infer_images", type=int, default=32, help="test images generated / model-only repeats")
    parser.add_argument("--pipeline_images", type=int, default=32)
    parser.add_argument("--compile", action="store_true", help="benchmark with torch.compile on")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.crop, args.batch, args.channels = 128, 64, 2, "4,8,16"
        args.steps, args.warmup, args.n_images, args.infer_images, args.pipeline_images = 3, 2, 8, 3, 4
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    channels = [int(c) for c in args.channels.split(",")]
    network = {"network_def#channels": channels, "network_def#strides": [2] * (len(channels) - 1)}
    train_overrides = {**network, "crop_size": [args.crop, args.crop], "batch_size": args.batch, "compile": args.compile}
    infer_overrides = {**network, "roi_size": [args.crop, args.crop]}

    data_dir = Path(args.data) if args.data else out / "data"
    if not (data_dir / "train-rle.csv").is_file():
        from scripts.synthetic import generate_dataset

        generate_dataset(data_dir, n=args.n_images, n_test=args.infer_images, rows=args.size, cols=args.size, positive_share=0.5, workers=os.cpu_count() or 1)
    checkpoint = out / "random_weights.pt"
    torch.manual_seed(0)
    torch.save(_parser("inference.json", infer_overrides).get_parsed_content("network_def").state_dict(), checkpoint)

    device = _parser("train.json", {}).get_parsed_content("device")
    results: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "settings": f"AttentionUnet {args.channels}, crops {args.crop}, batch {args.batch}, images {args.size}",
    }
    ceiling = model_step_ceiling(args, train_overrides)
    plain = model_step_ceiling(args, train_overrides, amp=True, channels_last=False, compile_=False)
    pipeline = training_pipeline(args, train_overrides, data_dir, out / "work")
    results["training"] = {
        "ceiling": ceiling,
        "plain_fp16": plain,
        "pipeline": pipeline,
        "pipeline_vs_ceiling": round(pipeline["images_per_s"] / ceiling["images_per_s"], 3),
        "defaults_vs_plain_fp16": round(ceiling["images_per_s"] / plain["images_per_s"], 3),
    }
    results["inference"] = {}
    for key, tta in (("no_tta", False), ("tta", True)):
        model_only = inference_model_only(args, infer_overrides, checkpoint, tta)
        run = inference_pipeline(infer_overrides, data_dir, checkpoint, out / f"inference_{key}", tta)
        results["inference"][key] = {
            "model_only": model_only,
            "pipeline": run,
            "pipeline_vs_model": round(run["images_per_s"] / model_only["images_per_s"], 3),
        }
    results["data_pipeline_per_core"] = data_pipeline_per_core(args, train_overrides, data_dir)
    results["writer"] = writer_cost(data_dir, out / "work", args.infer_images, _parser("inference.json", {}).get_parsed_content("write_workers"))
    results["rle"] = rle_speed(args.size if args.smoke else 1024)
    (out / "benchmark.json").write_text(json.dumps(results, indent=4))
    table = _table(results)
    (out / "benchmark.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
