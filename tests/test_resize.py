"""Whole images resized to one size (the seeds' 256 / 512 / 768) for training, and back to the DICOM's size for
every score and output; progressive training from the weights of a smaller size."""

import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer

from scripts.data.resize import ResizeWholed, image_size_pair
from scripts.networks.definition import image_size_for
from scripts.networks.resized import ResizedInferer, window_size
from tests.conftest import COMMON, TINY, config_files, run_bundle


def test_image_size_is_null_an_int_or_a_pair():
    assert image_size_pair(None) is None and image_size_pair(256) == (256, 256) and image_size_pair([512, 384]) == (512, 384)
    for bad in (0, [512], [512, -1], "512", True, 2.5):
        with pytest.raises(ValueError, match="image_size"):
            image_size_pair(bad)
    assert window_size(None, [512, 512]) == [512, 512] and window_size(256, [512, 512]) == [256, 256]


def test_the_training_resize_keeps_the_compact_forms_and_nothing_changes_without_a_size():
    image = MetaTensor(torch.randint(0, 256, (1, 100, 80), dtype=torch.uint8))
    label = np.zeros((1, 100, 80), dtype=np.uint8)
    label[:, 20:60, 10:40] = 1
    out = ResizeWholed(["image", "label"], [50, 40])({"image": image, "label": label})
    assert out["image"].dtype == torch.uint8 and tuple(out["image"].shape) == (1, 50, 40)
    assert isinstance(out["label"], np.ndarray) and out["label"].dtype == np.uint8 and out["label"].shape == (1, 50, 40)
    assert set(np.unique(out["label"])) == {0, 1} and out["label"].sum() == 20 * 15  # nearest: the box, halved
    same = ResizeWholed(["image", "label"], None)({"image": image, "label": label})
    assert same["image"] is image and same["label"] is label


def test_the_resized_inferer_runs_the_network_at_its_size_and_returns_logits_at_the_images():
    seen = []

    def network(x):
        seen.append(tuple(x.shape[-2:]))
        return x * 2.0 - 1.0

    ramp = torch.linspace(0, 1, 100)[:, None] * torch.linspace(0, 1, 80)[None, :]
    x = torch.stack([ramp, 1 - ramp])[:, None]  # (2, 1, 100, 80), smooth
    logits = ResizedInferer(64, SlidingWindowInferer([64, 64]))(x, network)
    assert set(seen) == {(64, 64)} and logits.shape == x.shape
    torch.testing.assert_close(logits, x * 2.0 - 1.0, atol=0.05, rtol=0)  # a smooth image survives the round trip
    seen.clear()
    torch.testing.assert_close(ResizedInferer(None, SlidingWindowInferer([64, 64]))(x, network), x * 2.0 - 1.0)
    assert set(seen) == {(64, 64)}  # without a size: the sliding window over the image itself


def test_an_ensemble_of_checkpoints_trained_at_different_sizes_is_refused(tmp_path):
    for name, size in (("a", [256, 256]), ("b", None), ("c", [256, 256])):
        (tmp_path / f"{name}.json").write_text(json.dumps({"score": 0.5, "image_size": size}))
    assert image_size_for([tmp_path / "a.pt", tmp_path / "c.pt"]) == [256, 256]
    assert image_size_for([tmp_path / "b.pt", tmp_path / "none.pt"]) is None  # no record: full resolution
    with pytest.raises(ValueError, match=r"different image sizes \(.*a.pt: \[256, 256\], .*b.pt: full resolution"):
        image_size_for([tmp_path / "a.pt", tmp_path / "b.pt"])


@pytest.mark.slow
def test_a_model_trained_on_resized_images_infers_at_that_size_and_writes_outputs_at_the_dicoms(tiny_siim, tmp_path):
    import pydicom
    from PIL import Image

    meta = ["--meta_file", "configs/metadata.json", "--dataset_dir", str(tiny_siim)]
    train = config_files(COMMON, "configs/train.json", TINY)
    run_bundle(["run", "--config_file", train, *meta, "--output_dir", str(tmp_path / "small"),
                "--ckpt_dir", str(tmp_path / "small_models"), "--max_epochs", "1", "--image_size", "48"])  # fmt: skip
    record = json.loads((tmp_path / "small_models" / "model.json").read_text())
    assert record["image_size"] == [48, 48]
    run_bundle(["run", "--config_file", config_files(COMMON, "configs/train.json", "configs/evaluate.json", TINY), *meta,
                "--output_dir", str(tmp_path / "eval"), "--ckpt_dir", str(tmp_path / "small_models")])  # fmt: skip
    assert (tmp_path / "small_models" / "thresholds.json").is_file()
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())  # scored at full size, from the record

    run_bundle(["run", "--config_file", config_files(COMMON, "configs/inference.json"), "--meta_file", "configs/metadata.json",
                "--dataset_dir", str(tiny_siim / "dicom-images-test"), "--output_dir", str(tmp_path / "out"),
                "--ckpt_dir", str(tmp_path / "small_models"), "--thresholds", "{'top': 0.0, 'min_area': 0, 'bottom': 0.0, 'min_component': 0}"])  # fmt: skip
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["image_size"] == [48, 48] and summary["roi_size"] == [48, 48]
    masks = sorted((tmp_path / "out" / "masks").glob("*.png"))
    assert len(masks) == 2
    for mask in masks:  # thresholds 0: every pixel positive, so the mask shows its size: the DICOM's own
        dicom = pydicom.dcmread(next(tiny_siim.joinpath("dicom-images-test").rglob(f"{mask.stem}.dcm")))
        array = np.asarray(Image.open(mask))
        assert array.shape == (dicom.Rows, dicom.Columns) and array.min() > 0

    # progressive: the second step trains at full resolution from the first step's weights
    second = run_bundle(["run", "--config_file", train, *meta, "--output_dir", str(tmp_path / "full"),
                         "--ckpt_dir", str(tmp_path / "full_models"), "--max_epochs", "1",
                         "--init_weights", str(tmp_path / "small_models" / "model.pt")])  # fmt: skip
    assert "training starts from the weights of" in second.stdout + second.stderr
    assert json.loads((tmp_path / "full_models" / "model.json").read_text())["image_size"] is None


def test_init_weights_names_a_missing_file_before_training(tmp_path):
    from scripts.training.checkpoints import InitialWeights

    with pytest.raises(FileNotFoundError, match=r"init_weights .*nope.pt: no such file"):
        InitialWeights(torch.nn.Conv2d(1, 1, 1), tmp_path / "nope.pt")
    assert InitialWeights(torch.nn.Conv2d(1, 1, 1), None).path is None
