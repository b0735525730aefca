"""Specification of the synthetic SIIM-format dataset writer (scripts/synthetic/)."""

import hashlib

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage

from scripts.siim import rle
from scripts.siim.datalist import build_datalist
from scripts.siim.rle_csv import read_rle_csv
from scripts.synthetic.__main__ import main
from scripts.synthetic.dataset import ANNOTATIONS_PER_POSITIVE, generate_dataset

SIIM_SOP_PREFIX = "1.2.276.0.7230010.3.1.4.8323329."


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("siim")
    cases = generate_dataset(out, n=24, seed=5, rows=160, cols=128, n_test=3, positive_share=0.5)
    return out, cases


def test_layout_is_study_series_sop_instance(dataset):
    out, cases = dataset
    for case in cases:
        ds = pydicom.dcmread(case.path, stop_before_pixels=True)
        relative = case.path.relative_to(out).parts
        assert relative == ("dicom-images-train", ds.StudyInstanceUID, ds.SeriesInstanceUID, f"{ds.SOPInstanceUID}.dcm")
        assert case.image_id == ds.SOPInstanceUID
    assert len(list((out / "dicom-images-test").rglob("*.dcm"))) == 3


def test_dicoms_carry_the_siim_tags(dataset):
    _, cases = dataset
    ds = pydicom.dcmread(cases[0].path)
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert ds.SOPClassUID == SecondaryCaptureImageStorage
    assert ds.Modality == "CR" and ds.BodyPartExamined == "CHEST"
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.SamplesPerPixel == 1
    assert ds.BitsAllocated == ds.BitsStored == 8 and ds.PixelRepresentation == 0
    assert (ds.Rows, ds.Columns) == (160, 128)
    assert ds.ViewPosition in ("PA", "AP") and ds.SeriesDescription == f"view: {ds.ViewPosition}"
    assert ds.PatientSex in ("M", "F") and 10 <= int(ds.PatientAge) <= 89
    assert float(ds.PixelSpacing[0]) in (0.139, 0.143, 0.168, 0.194311)
    assert ds.PatientName == ds.PatientID and len(ds.PatientID) == 36  # an anonymous UUID
    assert ds.SOPInstanceUID.startswith(SIIM_SOP_PREFIX)
    assert "ImagePositionPatient" not in ds and "ImageOrientationPatient" not in ds
    assert ds.pixel_array.shape == (160, 128) and ds.pixel_array.dtype == np.uint8


def test_uids_are_unique(dataset):
    _, cases = dataset
    headers = [pydicom.dcmread(case.path, stop_before_pixels=True) for case in cases]
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        assert len({getattr(ds, keyword) for ds in headers}) == len(cases)


def test_csv_has_the_stage1_layout(dataset):
    out, cases = dataset
    lines = (out / "train-rle.csv").read_text().splitlines()
    assert lines[0] == "ImageId, EncodedPixels"
    assert all(line.split(",")[1].startswith(" ") for line in lines[1:])
    assert len(lines) - 1 == sum(max(1, len(case.annotations)) for case in cases)


def test_csv_reads_back_through_the_reader_and_matches_the_cases(dataset):
    out, cases = dataset
    read = read_rle_csv(out / "train-rle.csv")
    assert read.problems == []
    assert read.annotations == {case.image_id: case.annotations for case in cases}
    assert any(len(case.annotations) > 1 for case in cases)  # several rows for multi-region images
    assert any(not case.annotations for case in cases)


def test_annotations_decode_inside_the_image_and_mark_the_drawn_region(dataset):
    _, cases = dataset
    positive = next(case for case in cases if case.annotations)
    pixels = pydicom.dcmread(positive.path).pixel_array
    for annotation in positive.annotations:
        mask = rle.decode(annotation, pixels.shape)
        assert mask.any()


def test_dataset_feeds_the_datalist_builder_with_nothing_unmatched(dataset):
    out, cases = dataset
    items, report = build_datalist(out, n_folds=3)
    assert len(items) == len(cases) and report.lines() == []


def test_same_seed_gives_identical_files_whatever_the_number_of_workers(tmp_path):
    def digest(root):
        return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}

    generate_dataset(tmp_path / "a", n=4, seed=1, rows=64, cols=64, workers=1)
    generate_dataset(tmp_path / "b", n=4, seed=1, rows=64, cols=64, workers=2)
    generate_dataset(tmp_path / "c", n=4, seed=2, rows=64, cols=64, workers=1)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_uncompressed_option_writes_explicit_vr_little_endian(tmp_path):
    cases = generate_dataset(tmp_path, n=1, seed=0, rows=72, cols=64, jpeg_quality=None)
    assert pydicom.dcmread(cases[0].path).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_stage2_csv_style_has_no_spaces(tmp_path):
    generate_dataset(tmp_path, n=2, seed=0, rows=72, cols=64, csv_style="stage2")
    assert (tmp_path / "train-rle.csv").read_text().splitlines()[0] == "ImageId,EncodedPixels"


def test_positive_share_and_annotation_counts_follow_the_challenge(tmp_path):
    cases = generate_dataset(tmp_path, n=150, seed=0, rows=64, cols=64)
    counts = [len(case.annotations) for case in cases]
    share = np.mean([c > 0 for c in counts])
    assert 0.12 < share < 0.34  # 22% expected; 150 draws
    assert set(counts) - {0} <= set(ANNOTATIONS_PER_POSITIVE)
    assert max(counts) >= 2


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n must"):
        generate_dataset(tmp_path, n=0)
    with pytest.raises(ValueError, match="positive_share"):
        generate_dataset(tmp_path, n=1, positive_share=1.5)


def test_command_line_writes_a_dataset_and_says_what_it_wrote(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--n", "3", "--rows", "72", "--cols", "64", "--workers", "1"]) == 0
    assert "3 training images" in capsys.readouterr().out
    assert len(read_rle_csv(tmp_path / "train-rle.csv")) == 3


def test_lesion_contrast_makes_the_pneumothorax_more_visible(tmp_path):
    def darkening(contrast):
        [case] = generate_dataset(tmp_path / str(contrast), n=1, seed=4, rows=256, cols=256, positive_share=1.0, jpeg_quality=None, lesion_contrast=contrast)
        pixels = pydicom.dcmread(case.path).pixel_array.astype(float)
        mask = np.zeros(pixels.shape, bool)
        for annotation in case.annotations:
            mask |= rle.decode(annotation, pixels.shape)
        return pixels, mask

    subtle, mask = darkening(1.0)
    strong, same_mask = darkening(4.0)
    np.testing.assert_array_equal(mask, same_mask)  # same case, same annotations
    assert strong[mask].mean() < subtle[mask].mean() - 2  # clearly darker inside
    np.testing.assert_allclose(strong[~mask].mean(), subtle[~mask].mean(), atol=0.5)  # outside barely moves


def test_lesion_scale_draws_larger_pneumothoraces(tmp_path):
    def total_area(scale, seed):
        cases = generate_dataset(
            tmp_path / f"{scale}-{seed}", n=4, seed=seed, rows=128, cols=128, positive_share=1.0, jpeg_quality=None, lesion_scale=scale
        )
        return sum(rle.decode(a, (128, 128)).sum() for case in cases for a in case.annotations)

    for seed in (0, 1):
        assert total_area(3.0, seed) > 1.25 * total_area(1.0, seed)  # less than 3x: lung-size caps, pixel rounding
    with pytest.raises(ValueError, match="lesion_scale"):
        generate_dataset(tmp_path / "bad", n=1, lesion_scale=0.0)
