"""Training speed: the model-only step (the ceiling) against the bundle's own training loop from DICOM files."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from scripts.benchmark.common import bundle_config, peak_gib, reset_peak, sync

__all__ = ["model_step_ceiling", "training_pipeline"]


def model_step_ceiling(args, overrides: dict, amp: bool | None = None, channels_last: bool | None = None, compile_: bool | None = None) -> dict:
    """Images/s of forward + backward + step on random tensors already on the device."""
    from scripts.utils.flags import as_flag

    parser = bundle_config("train.json", overrides)
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
    sync(device)
    first = time.perf_counter() - start
    for _ in range(args.warmup - 1):
        step()
    sync(device)
    reset_peak(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    seconds = time.perf_counter() - start
    return {
        "images_per_s": round(args.steps * args.batch / seconds, 2),
        "first_step_s": round(first, 2),
        "peak_gib": peak_gib(device),
        "amp": bool(amp) and device.type == "cuda",
        "dtype": str(dtype).replace("torch.", "") if bool(amp) and device.type == "cuda" else "float32",
        "channels_last": bool(channels_last),
        "compile": bool(compile_),
    }


def training_pipeline(args, overrides: dict, data_dir: Path, work: Path) -> dict:
    """Images/s of the bundle's own training loop (train.json), after warm-up, and the data-loader wait."""
    from ignite.engine import Events

    n_iterations = args.warmup + args.steps
    parser = bundle_config(
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
        sync(device)
        stamps.append(time.perf_counter())
        if engine.state.iteration == args.warmup:
            reset_peak(device)

    trainer.run()
    timed = stamps[args.warmup :]
    seconds = timed[-1] - stamps[args.warmup - 1]
    return {
        "images_per_s": round(len(timed) * args.batch / seconds, 2),
        "data_wait_ms_per_step": round(1000 * float(np.mean(waits[args.warmup :])), 1),
        "peak_gib": peak_gib(device),
        "cache_fill_s": round(cache_seconds, 1),
        "num_workers": parser.get_parsed_content("num_workers"),
        "steps_timed": len(timed),
    }
