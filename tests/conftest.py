"""Shared fixtures: a tiny synthetic SIIM data set, the stand-in network's checkpoint, and a runner for the bundle's
command lines."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.synthetic.dataset import generate_dataset

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "tests" / "configs" / "tiny.json")
#: Read first by every bundle command (network, device and precision, thresholds, image loading).
COMMON = "configs/common.json"


@pytest.fixture(scope="session")
def tiny_siim(tmp_path_factory) -> Path:
    """20 synthetic 96 x 96 images, half of them positive, in the SIIM layout."""
    out = tmp_path_factory.mktemp("tiny_siim")
    generate_dataset(out, n=20, seed=3, rows=96, cols=96, n_test=2, positive_share=0.5)
    return out


@pytest.fixture(scope="session")
def brightness_ckpt(tmp_path_factory) -> Path:
    """The stand-in network (bright = positive: ``tests.helpers.BrightnessNet``) as a checkpoint folder."""
    import torch

    from tests.helpers import BrightnessNet

    folder = tmp_path_factory.mktemp("brightness_ckpt")
    torch.save(BrightnessNet().state_dict(), folder / "model.pt")
    return folder


def bundle_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    return env


def config_files(*names: str) -> str:
    """The --config_file argument for several files, as the bundle CLI takes it."""
    return "[" + ",".join(f"'{name}'" for name in names) + "]"


def run_bundle(args: list[str], cwd: Path = REPO, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m monai.bundle <args>`` from the repository root; output captured."""
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=cwd,
        env=bundle_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"monai.bundle {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result
