"""Inference speed: model-only sliding window against ``configs/inference.json`` over DICOMs, and the writer's cost."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pydicom
import torch

from scripts.benchmark.common import REPO, bundle_config, calls_per_second, config_files

__all__ = ["BACKEND_VARIANTS", "backend_comparison", "inference_model_only", "inference_pipeline", "writer_cost"]


def inference_model_only(args, overrides: dict, checkpoint: Path, tta: bool) -> dict:
    """Images/s of sliding-window inference on full-size random images already on the device (no I/O)."""
    parser = bundle_config("inference.json", {**overrides, "checkpoints": [str(checkpoint)], "tta": tta})
    device = parser.get_parsed_content("device")
    network = parser.get_parsed_content("inference_network")  # the network on the configured backend
    inferer = parser.get_parsed_content("inferer")
    amp = parser.get_parsed_content("amp")
    dtype = parser.get_parsed_content("amp_dtype")
    memory_format = parser.get_parsed_content("memory_format")
    x = torch.rand(1, 1, args.size, args.size, device=device).to(memory_format=memory_format)

    def once() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=bool(amp) and device.type == "cuda"):
            torch.sigmoid(inferer(x, network))

    speed = calls_per_second(once, args.infer_images, device)
    return {"images_per_s": round(speed, 3), "seconds_per_image": round(1 / speed, 3), "tta": tta,
            "backend": parser.get_parsed_content("backend")}  # fmt: skip


#: The backends compared in one run: each with its settings (overrides of configs/inference.json).
BACKEND_VARIANTS = {
    "torch fp32": {"backend": "torch", "channels_last": False},
    "torch channels_last": {"backend": "torch", "channels_last": True},
    "openvino": {"backend": "openvino"},
    "onnxruntime": {"backend": "onnxruntime"},
}


def backend_comparison(args, overrides: dict, data_dir: Path, checkpoint: Path, out: Path) -> dict:
    """Seconds per image of each :data:`BACKEND_VARIANTS` entry, model-only and over the DICOM folder with every
    output written, and each one's speed-up over torch fp32 (the ratio of seconds)."""
    results = {}
    for name, settings in BACKEND_VARIANTS.items():
        if settings["backend"] != "torch" and bundle_config("inference.json", {}).get_parsed_content("device").type != "cpu":
            continue  # ONNX Runtime is the CPU backend
        merged = {**overrides, **settings}
        model = inference_model_only(args, merged, checkpoint, tta=False)
        pipeline = inference_pipeline(merged, data_dir, checkpoint, out / f"backend_{name.replace(' ', '_')}", tta=False)
        results[name] = {"model_only_s_per_image": model["seconds_per_image"],
                         "pipeline_s_per_image": pipeline["seconds_per_image"]}  # fmt: skip
    reference = results["torch fp32"]
    for entry in results.values():
        entry["model_only_speedup"] = round(reference["model_only_s_per_image"] / entry["model_only_s_per_image"], 2)
        entry["pipeline_speedup"] = round(reference["pipeline_s_per_image"] / entry["pipeline_s_per_image"], 2)
    return results


def inference_pipeline(overrides: dict, data_dir: Path, checkpoint: Path, out: Path, tta: bool) -> dict:
    """Images/s of configs/inference.json over the test folder, every output written."""
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
    workflow.run()
    workflow.finalize()
    summary = json.loads((out / "summary.json").read_text())
    return {
        "images_per_s": summary["images_per_second"],
        "seconds_per_image": summary["seconds_per_image"],
        "images": summary["processed"],
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
