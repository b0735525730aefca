"""MONAI Label's label files to DICOM SEG and back (scripts/serving/label_seg.py), the bridge the MONAI Label app on a
DICOMweb server runs in the bundle's environment."""

import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage

from scripts.inference.dicom_seg import read_segmentation_mask
from scripts.serving.label_seg import label_to_seg, seg_to_label
from tests.conftest import REPO, bundle_env
from tests.helpers import asymmetric_case, write_test_dicom


def test_a_label_becomes_a_manual_seg_and_comes_back_in_the_same_layout(tmp_path):
    pixels, mask = asymmetric_case(300, 220)
    image = write_test_dicom(tmp_path / "image.dcm", pixels, jpeg_quality=None)
    label = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(mask.T.astype(np.uint8), np.eye(4)), label)  # (cols, rows), as MONAI Label saves it
    label_to_seg(image, label, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL" and "AlgorithmName" not in seg.SegmentSequence[0]
    assert seg.StudyInstanceUID == pydicom.dcmread(image).StudyInstanceUID
    np.testing.assert_array_equal(read_segmentation_mask(tmp_path / "seg.dcm").astype(bool), mask)
    seg_to_label(tmp_path / "seg.dcm", tmp_path / "back.nii.gz")
    back = np.asarray(LoadImage(image_only=True)(str(tmp_path / "back.nii.gz")))
    np.testing.assert_array_equal(back.astype(bool), mask.T)


def test_an_empty_label_is_a_seg_too_and_a_misshapen_one_is_refused(tmp_path):
    pixels, mask = asymmetric_case(300, 220)
    image = write_test_dicom(tmp_path / "image.dcm", pixels, jpeg_quality=None)
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((220, 300), np.uint8), np.eye(4)), empty)
    label_to_seg(image, empty, tmp_path / "empty.dcm")  # "no pneumothorax" is a label
    assert read_segmentation_mask(tmp_path / "empty.dcm").sum() == 0
    wrong = tmp_path / "wrong.nii.gz"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), wrong)  # (rows, cols): not MONAI's layout
    with pytest.raises(ValueError, match="wrong.nii.gz has shape"):
        label_to_seg(image, wrong, tmp_path / "wrong.dcm")
    assert not (tmp_path / "wrong.dcm").exists()
    command = [sys.executable, "-m", "scripts.serving.label_seg", "to-seg", "--image", str(image), "--label", str(wrong),
               "--out", str(tmp_path / "wrong.dcm")]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=bundle_env(), capture_output=True, text=True)
    # the last line is the one the app reports (MONAI prints warnings before it)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith("error: ValueError: label file")
