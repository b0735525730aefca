"""Hostile and broken input (issue 13): each case costs only itself, and says what it is in one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scripts.data.reader import LoadRadiographd, declared_size
from scripts.siim import rle
from tests.conftest import REPO, bundle_env
from tests.helpers import BrightnessNet, asymmetric_case, write_test_dicom
from tests.hostile import jpeg_bomb


def load(path, **kwargs):
    return LoadRadiographd("image", **kwargs)({"image": str(path)})["image"]


# ------------------------------------------------------------------------------------------ decompression bombs
def test_the_bomb_is_what_it_claims_a_few_kilobytes_declaring_3_6_gigapixels(tmp_path):
    import pydicom

    path = jpeg_bomb(tmp_path / "bomb.dcm")
    assert path.stat().st_size < 5000
    size = declared_size(pydicom.dcmread(path))
    assert size["frame_header"] == (60000, 60000) and (size["rows"], size["columns"]) == (60000, 60000)


BOMB_UNDER_A_MEMORY_LIMIT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # 3 GiB of address space: the bomb wants 3.6 GB
from scripts.data.reader import LoadRadiographd
try:
    LoadRadiographd("image")({"image": sys.argv[1]})
except ValueError as error:
    print("REFUSED", error)
"""


@pytest.mark.parametrize("header", [(60000, 60000), (16, 16)], ids=["header-says-so", "only-the-jpeg-frame-says-so"])
def test_a_decompression_bomb_is_refused_before_decoding_under_a_small_memory_limit(tmp_path, header):
    path = jpeg_bomb(tmp_path / "bomb.dcm", header=header)
    result = subprocess.run(
        [sys.executable, "-c", BOMB_UNDER_A_MEMORY_LIMIT, str(path)],
        cwd=REPO, env=bundle_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"REFUSED {path}: ") and "60000 x 60000" in result.stdout
    assert "max_image_pixels" in result.stdout or "header says" in result.stdout


def test_the_pixel_limit_is_configurable_and_a_normal_radiograph_passes(tmp_path):
    pixels, _ = asymmetric_case(300, 220)
    path = write_test_dicom(tmp_path / "ok.dcm", pixels, jpeg_quality=90)
    assert load(path).shape == (220, 300)
    with pytest.raises(ValueError, match=r"300 x 220 x 1 pixels, more than the limit of 10000"):
        load(path, max_pixels=10_000)


def test_a_jpeg_frame_of_another_size_than_the_header_is_refused(tmp_path):
    path = jpeg_bomb(tmp_path / "odd.dcm", frame=(32, 32), header=(16, 16))
    with pytest.raises(ValueError, match="compressed frame is 32 x 32 pixels, its header says 16 x 16"):
        load(path)


# ------------------------------------------------------------------------------- files that only look like DICOM
def _png(path):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path, format="PNG")
    return path


def _text(path):
    path.write_text("hello, I am not an image")
    return path


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda d: _png(d / "x.dcm"), "a PNG image, not DICOM"),
        (lambda d: (d / "empty.dcm").write_bytes(b"") or d / "empty.dcm", "empty file (0 bytes)"),
        (lambda d: (d / "dangling.dcm").symlink_to(d / "gone.dcm") or d / "dangling.dcm", "dangling symbolic link"),
        (lambda d: (d / "loop.dcm").symlink_to(d / "loop.dcm") or d / "loop.dcm", "symbolic link loop"),
        (lambda d: (d / "folder.dcm").mkdir() or d / "folder.dcm", "a folder, not a file"),
        (lambda d: _text(d / "text.dcm"), "not a DICOM file"),
    ],
    ids=["png", "empty", "dangling-link", "link-loop", "folder", "text"],
)
def test_what_is_not_a_dicom_radiograph_is_named_as_what_it_is(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises((ValueError, RuntimeError)) as raised:
        load(path)
    error = raised.value.__cause__ if isinstance(raised.value, RuntimeError) and raised.value.__cause__ else raised.value
    message = str(error)
    assert str(path) in message and reason in message
    assert "suitable reader" not in message


@pytest.mark.slow
def test_inference_lists_every_hostile_file_and_processes_the_rest(tmp_path):
    folder = tmp_path / "in"
    pixels, mask = asymmetric_case(300, 220)
    write_test_dicom(folder / "good.dcm", pixels, sop_instance_uid="1.2.826.0.1.3680043.8.498.1", jpeg_quality=None)
    jpeg_bomb(folder / "bomb.dcm")
    _png(folder / "x.dcm")
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "dangling.dcm").symlink_to(folder / "gone.dcm")
    (folder / "loop.dcm").symlink_to(folder / "loop.dcm")
    weights = tmp_path / "ckpt"
    weights.mkdir()
    torch.save(BrightnessNet().state_dict(), weights / "model.pt")
    from tests.test_inference import _run_inference

    out = tmp_path / "out"
    _run_inference(folder, out, weights, "--num_workers", "2")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processed"] == 1 and summary["failed"] == 5
    errors = dict(line.split(",", 1) for line in (out / "errors.csv").read_text().splitlines()[1:])
    reasons = {Path(path).name: reason for path, reason in errors.items()}
    assert "60000 x 60000" in reasons["bomb.dcm"] and "a PNG image, not DICOM" in reasons["x.dcm"]
    assert "empty file" in reasons["empty.dcm"] and "dangling symbolic link" in reasons["dangling.dcm"]
    assert "symbolic link loop" in reasons["loop.dcm"]
    rows = (out / "submission.csv").read_text().splitlines()
    assert rows == ["ImageId,EncodedPixels", f"1.2.826.0.1.3680043.8.498.1,{rle.encode(mask)}"]


def _dies_on_the_killer(item):
    if item["image"].endswith("killer.dcm") and os.getpid() != _PARENT:
        os.kill(os.getpid(), 9)  # what the kernel's out-of-memory killer does
    return {"image": torch.zeros(1, 4, 4)}


_PARENT = os.getpid()


def test_a_loader_worker_that_dies_is_reported_with_the_file_it_held(tmp_path):
    from monai.data import DataLoader

    from scripts.inference.engine import FolderEvaluator, LoaderWorkerDied, SafeDataset

    items = [{"image": str(tmp_path / name)} for name in ("a.dcm", "b.dcm", "killer.dcm", "d.dcm")]
    dataset = SafeDataset(items, transform=_dies_on_the_killer)
    loader = DataLoader(dataset, batch_size=1, num_workers=1)
    evaluator = FolderEvaluator(device=torch.device("cpu"), val_data_loader=loader, network=torch.nn.Identity())
    with pytest.raises(LoaderWorkerDied, match=r"died while loading .*killer\.dcm \(pid \d+\)"):
        evaluator.run()
    notes = dataset.notes
    del dataset, loader, evaluator
    import gc

    gc.collect()
    assert not notes.exists()  # the notes folder goes with the dataset
