"""What every measurement shares: device timing, peak memory, and the bundle's own configs."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from scripts.utils.metadata import BUNDLE_ROOT as REPO

__all__ = ["REPO", "CpuSteal", "bundle_config", "calls_per_second", "config_files", "cpu_name", "peak_gib", "reset_peak",
           "sync"]

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


def cpu_name() -> str:
    """The CPU's model name as the kernel gives it (``/proc/cpuinfo``), or ``"CPU"`` where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


class CpuSteal:
    """The share of the CPU time this machine's CPUs wanted while the ``with`` block ran that the hypervisor gave to
    other guests instead (steal / (busy + steal), from ``/proc/stat``; None where the kernel does not report it).
    Figures measured with much of it are the neighbours', not this machine's: a benchmark reports it beside them."""

    @staticmethod
    def _times() -> tuple[int, int] | None:
        """(steal, busy + steal) jiffies so far: the ``cpu`` line's user nice system idle iowait irq softirq steal
        (guest time is counted in user and nice already)."""
        try:
            fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        return (fields[7], sum(fields[:8]) - fields[3] - fields[4]) if len(fields) >= 8 else None

    def __enter__(self) -> "CpuSteal":
        self._start, self.share = self._times(), None
        return self

    def __exit__(self, *_) -> None:
        end = self._times()
        if self._start is not None and end is not None and end[1] > self._start[1]:
            self.share = round((end[0] - self._start[0]) / (end[1] - self._start[1]), 3)


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
