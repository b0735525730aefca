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
* inference backends, in one run: torch fp32, torch channels_last and (on a CPU) OpenVINO and ONNX Runtime, seconds per image
  model-only and over the DICOM folder with every output written (the run's wall time over its images), each one's
  speed-up over torch fp32 and its parity with it (probabilities, masks);
* the data pipeline alone, per CPU core: decode, label, the loader's crop and parameter draw, the textbook MONAI
  CPU augmentation chain for comparison, and the on-device augmentation per image;
* the inference writer: engine-thread ms per image with the files written in that thread and in writer processes;
* RLE: ms per mask for ``scripts.siim.rle`` encode/decode against a per-pixel loop.

Data comes from ``scripts.synthetic`` (generated into ``--out/data`` unless ``--data`` names a SIIM folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch

from scripts.benchmark.common import REPO, bundle_config, cpu_name
from scripts.benchmark.data import data_pipeline_per_core, rle_speed
from scripts.benchmark.inference import backend_comparison, inference_model_only, inference_pipeline, writer_cost
from scripts.benchmark.training import model_step_ceiling, training_pipeline


def table(results: dict) -> str:
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
    lines += backend_rows(results)
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


def backend_rows(results: dict) -> list[str]:
    images = next(iter(results["backends"].values()))["images"]
    lines = ["", f"| inference backend (no TTA) | s/image model-only | speed-up | s/image end to end ({images} DICOMs, "
             "every output written) | speed-up | parity: max probability difference, min mask agreement | CPU steal |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, entry in results["backends"].items():
        parity = ("reference" if "max_probability_difference" not in entry else
                  f"{entry['max_probability_difference']:.1e}, {100 * entry['min_mask_agreement']:.3f} %")  # fmt: skip
        steal = "not reported" if entry["cpu_steal_share"] is None else f"{100 * entry['cpu_steal_share']:.1f} %"
        lines.append(f"| {name} | {entry['model_only_s_per_image']} | {entry['model_only_speedup']:.2f} | "
                     f"{entry['pipeline_s_per_image']} | {entry['pipeline_speedup']:.2f} | {parity} | {steal} |")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmark", description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--only", choices=["all", "backends"], default="all",
                        help="backends: only the inference backends' comparison (a CPU's question, in minutes)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.crop, args.batch, args.channels = 128, 64, 2, "4,8,16"
        args.steps, args.warmup, args.n_images, args.infer_images, args.pipeline_images = 3, 2, 8, 3, 4
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    channels = [int(c) for c in args.channels.split(",")]
    network = {"network_config#channels": channels, "network_config#strides": [2] * (len(channels) - 1)}
    train_overrides = {**network, "crop_size": [args.crop, args.crop], "batch_size": args.batch, "compile": args.compile}
    infer_overrides = {**network, "roi_size": [args.crop, args.crop]}

    data_dir = Path(args.data) if args.data else out / "data"
    if not (data_dir / "train-rle.csv").is_file():
        from scripts.synthetic.dataset import generate_dataset

        generate_dataset(data_dir, n=args.n_images, n_test=args.infer_images, rows=args.size, cols=args.size, positive_share=0.5, workers=os.cpu_count() or 1)
    checkpoint = out / "random_weights.pt"
    torch.manual_seed(0)
    torch.save(bundle_config("inference.json", infer_overrides).get_parsed_content("network_def").state_dict(), checkpoint)

    device = bundle_config("train.json", {}).get_parsed_content("device")
    results: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()} ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "settings": f"AttentionUnet {args.channels}, crops {args.crop}, batch {args.batch}, images {args.size}",
    }
    if args.only == "backends":
        results["backends"] = backend_comparison(args, infer_overrides, data_dir, checkpoint, out)
        (out / "benchmark.json").write_text(json.dumps(results, indent=4))
        report = "\n".join([f"Device: {results['device']}; torch {results['torch']}; {results['settings']}", *backend_rows(results)])
        (out / "benchmark.md").write_text(report + "\n")
        print(report)
        return 0
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
    results["backends"] = backend_comparison(args, infer_overrides, data_dir, checkpoint, out)
    results["data_pipeline_per_core"] = data_pipeline_per_core(args, train_overrides, data_dir)
    results["writer"] = writer_cost(data_dir, out / "work", args.infer_images, bundle_config("inference.json", {}).get_parsed_content("write_workers"))
    results["rle"] = rle_speed(args.size if args.smoke else 1024)
    (out / "benchmark.json").write_text(json.dumps(results, indent=4))
    report = table(results)
    (out / "benchmark.md").write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
