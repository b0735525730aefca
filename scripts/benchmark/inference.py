"""Inference speed: model-only sliding window against ``configs/inference.json`` over DICOMs, and the writer's cost."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pydicom
import torch

from scripts.benchmark.common import REPO, CpuSteal, bundle_config, calls_per_second, config_files

__all__ = ["BACKEND_VARIANTS", "backend_comparison", "inference_model_only", "inference_pipeline", "writer_cost"]


def inference_model_only(args, overrides: dict, checkpoint: Path, tta: bool, keep: dict | None = None) -> dict:
    """Images/s of sliding-window inference on a full-size random image already on the device (no I/O); the image's
    probabilities go into ``keep["probabilities"]`` when ``keep`` is given (the same image for every call: seeded)."""
    parser = bundle_config("inference.json", {**overrides, "checkpoints": [str(checkpoint)], "tta": tta})
    device = parser.get_parsed_content("device")
    network = parser.get_parsed_content("inference_network")  # the network on the configured backend
    inferer = parser.get_parsed_content("inferer")
    amp = parser.get_parsed_content("amp")
    dtype = parser.get_parsed_content("amp_dtype")
    memory_format = parser.get_parsed_content("memory_format")
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, args.size, args.size, generator=generator).to(device, memory_format=memory_format)

    def once() -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=bool(amp) and device.type == "cuda"):
            return torch.sigmoid(inferer(x, network))

    speed = calls_per_second(once, args.infer_images, device)
    if keep is not None:
        keep["probabilities"] = once().float().cpu().numpy()
    return {"images_per_s": round(speed, 3), "seconds_per_image": round(1 / speed, 3), "tta": tta,
            "backend": parser.get_parsed_content("backend")}  # fmt: skip


#: The backends compared in one run: each with its settings (overrides of configs/inference.json). The first is
#: the reference of the speed-ups and of parity: PyTorch in float32 (no AMP, even on a GPU), contiguous.
BACKEND_VARIANTS = {
    "torch fp32": {"backend": "torch", "channels_last": False, "amp": False},
    "torch channels_last": {"backend": "torch", "channels_last": True},
    "openvino": {"backend": "openvino"},
    "onnxruntime": {"backend": "onnxruntime"},
    "openvino bf16 (opt-in)": {"backend": "openvino", "cpu_precision": "bf16"},
}


def backend_comparison(args, overrides: dict, data_dir: Path, checkpoint: Path, out: Path) -> dict:
    """Each :data:`BACKEND_VARIANTS` entry in one run: seconds per image model-only and end to end (the wall time of
    ``inference.json`` over the DICOM folder, every output written, start-up included, over the images), each one's
    speed-up over torch fp32 (the ratio of seconds), and its parity with torch fp32: the largest difference of a
    pixel's probability on the model-only image, and the smallest share of mask pixels that agree over the folder;
    and the share of CPU time stolen by the hypervisor meanwhile (:class:`~scripts.benchmark.common.CpuSteal`)."""
    results, reference = {}, None
    cpu = bundle_config("inference.json", {}).get_parsed_content("device").type == "cpu"
    for name, settings in BACKEND_VARIANTS.items():
        if settings["backend"] != "torch" and not cpu:
            continue  # OpenVINO and ONNX Runtime are the CPU's backends
        merged, kept = {**overrides, **settings}, {}
        folder = out / f"backend_{name.split(' (')[0].replace(' ', '_')}"
        with CpuSteal() as steal:
            model = inference_model_only(args, merged, checkpoint, tta=False, keep=kept)
            pipeline = inference_pipeline(merged, data_dir, checkpoint, folder, tta=False)
        entry = {"model_only_s_per_image": model["seconds_per_image"],
                 "pipeline_s_per_image": round(pipeline["wall_seconds"] / max(pipeline["images"], 1), 3),
                 "images": pipeline["images"], "cpu_steal_share": steal.share}  # fmt: skip
        if reference is None:
            reference = (kept["probabilities"], folder)
        else:
            entry["max_probability_difference"] = float(np.abs(kept["probabilities"] - reference[0]).max())
            entry["min_mask_agreement"] = mask_agreement(reference[1] / "masks", folder / "masks")
        results[name] = entry
    first = next(iter(results.values()))
    for entry in results.values():
        entry["model_only_speedup"] = round(first["model_only_s_per_image"] / entry["model_only_s_per_image"], 2)
        entry["pipeline_speedup"] = round(first["pipeline_s_per_image"] / entry["pipeline_s_per_image"], 2)
    return results


def mask_agreement(expected: Path, found: Path) -> float:
    """The smallest share of pixels on which the masks of ``found`` agree with those of ``expected`` (same names)."""
    from PIL import Image

    shares = []
    for mask in sorted(expected.glob("*.png")):
        if not (found / mask.name).is_file():  # an image the variant lost agrees on nothing
            shares.append(0.0)
            continue
        a, b = np.asarray(Image.open(mask)) > 0, np.asarray(Image.open(found / mask.name)) > 0
        shares.append(float((a == b).mean()))
    if not shares:
        raise ValueError(f"{expected} holds no masks to compare")
    return min(shares)


def inference_pipeline(overrides: dict, data_dir: Path, checkpoint: Path, out: Path, tta: bool) -> dict:
    """Images/s of configs/inference.json over the test folder, every output written (``seconds_per_image``: the
    mean of the images' own times, as ``summary.json`` gives it; ``wall_seconds``: the whole run, start-up and the
    publishing of the results included)."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=config_files("inference.json"),
        meta_file=str(REPO / "configs" / "metadata.json"),
        workflow_type="infer",
        bundle_root=str(REPO),
        dataset_dir=str(data_dir / "dicom-images-test"),
        output_dir=str(out),
        checkpoints=[str(checkpoint)],
        tta=tta,
        overwrite=True,
        **overrides,
    )
    workflow.initialize()
    start = time.perf_counter()
    workflow.run()
    wall = time.perf_counter() - start
    workflow.finalize()
    summary = json.loads((out / "summary.json").read_text())
    return {
        "images_per_s": summary["images_per_second"],
        "seconds_per_image": summary["seconds_per_image"],
        "images": summary["processed"],
        "wall_seconds": round(wall, 3),
        "tta": tta,
    }


def writer_cost(data_dir: Path, out: Path, n_images: int, workers: int) -> dict:
    """Milliseconds of the engine's thread per image that inference's writer takes, with every file written in that
    thread (``workers=0``) and handed to ``workers`` processes; each image positive (mask PNG, RLE, DICOM SEG)."""
    from monai.data import MetaTensor

    from scripts.inference.inputs import scan_dicom_inputs
    from scripts.inference.writer import InferenceWriter
    from scripts.synthetic.anatomy import render_case

    sources = scan_dicom_inputs(data_dir / "dicom-images-test").files[:n_images]
    items = []
    for i, source in enumerate(sources):
        header = pydicom.dcmread(source, stop_before_pixels=True)
        rows, cols = int(header.Rows), int(header.Columns)
        _, regions = render_case(np.random.default_rng(i), rows, cols, n_regions=2)
        mask = torch.from_numpy(np.ascontiguousarray(np.logical_or.reduce(regions).T[None], dtype=np.float32))
        meta = {"filename_or_obj": str(source), "SOPInstanceUID": str(header.SOPInstanceUID), "Rows": rows, "Columns": cols}
        items.append({"image": MetaTensor(mask.clone(), meta=meta), "pred": mask, "image_prob": 1.0})
    results = {"images": len(items)}
    for count in (0, workers):
        writer = InferenceWriter(out / f"writer_{count}", workers=count, overwrite=True)
        writer.start_run()  # as at the engine's start (staging folder, writer processes): not timed
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
