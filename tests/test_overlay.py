"""Specification of the overlay pictures (scripts/inference/overlay.py)."""

import numpy as np
import pytest
from PIL import Image

from scripts.inference.overlay import OUTLINE_RGB, main, render_overlay
from scripts.siim import rle
from tests.helpers import asymmetric_case, write_test_dicom


def test_outline_is_drawn_on_the_mask_border_in_image_orientation():
    pixels, mask = asymmetric_case(rows=60, cols=40)
    mask = np.zeros_like(mask)
    mask[10:30, 5:15] = True
    picture = render_overlay(pixels, mask, thickness=1)
    assert picture.shape == (60, 40, 3) and picture.dtype == np.uint8
    assert tuple(picture[10, 5]) == OUTLINE_RGB  # corner of the region
    assert tuple(picture[20, 10]) != OUTLINE_RGB  # inside
    assert picture[50, 30, 0] == picture[50, 30, 1] == picture[50, 30, 2]  # outside stays grey


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="same shape"):
        render_overlay(np.zeros((4, 5)), np.zeros((5, 4), dtype=bool))


def test_command_line_draws_a_dicom_with_its_csv_annotations(tmp_path):
    pixels, mask = asymmetric_case(rows=60, cols=40)
    dicom = write_test_dicom(tmp_path / "1.2.3.dcm", pixels, sop_instance_uid="1.2.3", jpeg_quality=None)
    csv = tmp_path / "train-rle.csv"
    csv.write_text(f"ImageId, EncodedPixels\n1.2.3, {rle.encode(mask)}\n")
    assert main(["--dicom", str(dicom), "--csv", str(csv), "--out", str(tmp_path / "o.png")]) == 0
    picture = np.asarray(Image.open(tmp_path / "o.png"))
    assert picture.shape == (60, 40, 3)
    outline = np.all(picture == OUTLINE_RGB, axis=-1)
    assert outline.any() and not outline[~mask].any()


def test_command_line_shows_monochrome1_images_with_bright_bone(tmp_path):
    pixels, mask = asymmetric_case(rows=60, cols=40)
    dicom = write_test_dicom(tmp_path / "m1.dcm", (255 - pixels).astype(np.uint8), photometric="MONOCHROME1", jpeg_quality=None)
    assert main(["--dicom", str(dicom), "--rle", "-1", "--out", str(tmp_path / "o.png")]) == 0
    grey = np.asarray(Image.open(tmp_path / "o.png"))[..., 0]
    assert grey[mask].mean() > grey[~mask].mean() + 100  # the bright structure stays bright after inversion
