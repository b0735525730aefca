"""What every measurement shares: device timing, peak memory, and the bundle's own configs."""

from __future__ import annotations

import time

import torch

from scripts.utils.metadata import BUNDLE_ROOT as REPO

__all__ = ["REPO", "bundle_config", "calls_per_second", "config_files", "peak_gib", "reset_peak", "sync"]

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def calls_per_second(fn, calls: int, device: torch.device) -> float:
    """Calls of ``fn`` per second on ``device``, after one untimed warm-up call."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return calls / (time.perf_counter() - start)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def config_files(config: str) -> list[str]:
    """``configs/common.json`` and ``configs/<config>``: what the bundle's commands read."""
    return [str(REPO / "configs" / "common.json"), str(REPO / "configs" / config)]


def bundle_config(config: str, overrides: dict) -> "ConfigParser":  # noqa: F821
    """The bundle's ``config`` (with ``common.json``) rooted at the repository, with ``overrides``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files(config))
    parser["bundle_root"] = str(REPO)
    for key, value in overrides.items():
        parser[key] = value
    return parser
