"""Specification of the MONAI transforms between SIIM annotations and loaded radiographs (scripts/data/)."""

import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, RandFlipd, SpatialCropd

from scripts.data.intensity import NormalizeRadiograph, NormalizeRadiographd
from scripts.data.labels import LabelToMaskd, MaskToRLE, RLEToMask, RLEToMaskd
from scripts.data.reader import RadiographReader
from scripts.siim import rle
from tests.helpers import asymmetric_case, image_loading, write_test_dicom


def load_pipeline(**normalize):
    return Compose(
        [
            LoadImaged("image", reader=RadiographReader()),
            EnsureChannelFirstd("image"),
            NormalizeRadiographd("image", **normalize),
            RLEToMaskd("label", ref_key="image"),
        ]
    )


@pytest.mark.parametrize("jpeg_quality", [None, 95])
def test_image_and_mask_line_up_after_loading_a_non_square_asymmetric_dicom(tmp_path, jpeg_quality):
    pixels, mask = asymmetric_case(rows=300, cols=220)
    path = write_test_dicom(tmp_path / "case.dcm", pixels, jpeg_quality=jpeg_quality)
    item = load_pipeline()({"image": str(path), "label": [rle.encode(mask)]})
    image, label = item["image"], item["label"]
    assert image.shape == label.shape == (1, 220, 300)  # MONAI orientation: (1, cols, rows)
    np.testing.assert_array_equal(image[0].numpy() > 0.5, label[0].numpy().astype(bool))
    # and both are the transpose of what pydicom shows
    np.testing.assert_array_equal(label[0].numpy().T.astype(bool), mask)
    np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array > 125, mask)


def test_label_follows_the_image_through_spatial_transforms(tmp_path):
    pixels, mask = asymmetric_case()
    path = write_test_dicom(tmp_path / "case.dcm", pixels, jpeg_quality=None)
    pipeline = Compose(
        [
            load_pipeline(),
            SpatialCropd(["image", "label"], roi_start=(3, 7), roi_end=(200, 280)),
            RandFlipd(["image", "label"], prob=1.0, spatial_axis=0),
        ]
    )
    item = pipeline({"image": str(path), "label": [rle.encode(mask)]})
    np.testing.assert_array_equal(item["image"][0].numpy() > 0.5, item["label"][0].numpy().astype(bool))
    assert isinstance(item["label"], MetaTensor)


def test_several_annotations_are_combined_by_union_not_sum():
    first = np.zeros((6, 4), dtype=bool)
    first[1:4, 1] = True
    second = np.zeros((6, 4), dtype=bool)
    second[2:5, 1] = True  # overlaps the first
    label = RLEToMask()([rle.encode(first), rle.encode(second)], spatial_shape=(4, 6))
    assert label.dtype == np.uint8 and label.max() == 1
    np.testing.assert_array_equal(label[0].T.astype(bool), first | second)


@pytest.mark.parametrize("annotations", [[], "-1", [" -1"]])
def test_negative_annotations_give_an_empty_label(annotations):
    label = RLEToMask()(annotations, spatial_shape=(4, 6))
    assert label.shape == (1, 4, 6) and not label.any()


def test_annotation_larger_than_the_image_names_the_file(tmp_path):
    pixels, _ = asymmetric_case(rows=30, cols=20)
    path = write_test_dicom(tmp_path / "small.dcm", pixels, jpeg_quality=None)
    loaded = Compose([LoadImaged("image", reader=RadiographReader()), EnsureChannelFirstd("image")])({"image": str(path)})
    with pytest.raises(ValueError, match=r"small\.dcm.*past the end"):
        RLEToMaskd("label")({**loaded, "label": ["0 601"]})


def test_prediction_in_monai_orientation_encodes_to_the_image_orientation_rle():
    _, mask = asymmetric_case()
    prediction = torch.from_numpy(mask.T.copy())[None].float()  # (1, cols, rows), as a network returns it
    assert MaskToRLE()(prediction) == rle.encode(mask)


def test_probability_map_is_thresholded_before_encoding():
    probabilities = np.zeros((1, 4, 6), dtype=np.float32)
    probabilities[0, 1, 2] = 0.7
    probabilities[0, 2, 2] = 0.3
    expected = np.zeros((6, 4), dtype=bool)  # image orientation: (rows, cols) = transpose of (cols, rows)
    expected[2, 1] = True
    assert MaskToRLE(threshold=0.5)(probabilities) == rle.encode(expected)


def test_mask_to_rle_rejects_multichannel_input():
    with pytest.raises(ValueError, match="shape"):
        MaskToRLE()(np.zeros((2, 4, 6)))


def test_label_decode_then_encode_round_trips_through_monai_orientation():
    _, mask = asymmetric_case()
    label = RLEToMask()(rle.encode(mask), spatial_shape=mask.T.shape)
    assert MaskToRLE()(label) == rle.encode(mask)


def test_monochrome1_is_inverted_so_bone_is_bright(tmp_path):
    pixels, mask = asymmetric_case()
    inverted = (255 - pixels).astype(np.uint8)
    path = write_test_dicom(tmp_path / "m1.dcm", inverted, photometric="MONOCHROME1", jpeg_quality=None)
    item = load_pipeline()({"image": str(path), "label": [rle.encode(mask)]})
    assert item["image"].meta["PhotometricInterpretation"] == "MONOCHROME1"
    np.testing.assert_array_equal(item["image"][0].numpy() > 0.5, item["label"][0].numpy().astype(bool))


@pytest.mark.parametrize("bits_stored", [10, 12, 16])
def test_high_bit_depth_images_normalise_like_8_bit_ones(tmp_path, bits_stored):
    pixels, mask = asymmetric_case()
    scale = (2**bits_stored - 1) / 255
    deep = np.round(pixels.astype(np.float64) * scale).astype(np.uint16)
    eight = load_pipeline()({"image": str(write_test_dicom(tmp_path / "8.dcm", pixels, jpeg_quality=None)), "label": []})
    path = write_test_dicom(tmp_path / "deep.dcm", deep, bits_stored=bits_stored, jpeg_quality=None)
    item = load_pipeline()({"image": str(path), "label": [rle.encode(mask)]})
    assert item["image"].meta["BitsStored"] == bits_stored
    np.testing.assert_allclose(item["image"].numpy(), eight["image"].numpy(), atol=1e-3)


def test_bits_mode_divides_by_the_stored_range():
    image = torch.tensor([[0.0, 1023.0, 512.0]])
    out = NormalizeRadiograph(mode="bits")(image, bits_stored=10)
    np.testing.assert_allclose(out.numpy(), [[0.0, 1.0, 512 / 1023]], rtol=1e-6)


def test_bits_mode_inverts_monochrome1_within_the_stored_range():
    out = NormalizeRadiograph(mode="bits")(np.array([[0.0, 255.0]]), photometric="MONOCHROME1", bits_stored=8)
    np.testing.assert_allclose(out, [[1.0, 0.0]])


def test_percentile_mode_clips_outliers_to_the_unit_range():
    image = np.linspace(0, 1000, 64 * 64, dtype=np.float32).reshape(64, 64)
    image[0, 0] = 1e6
    out = NormalizeRadiograph(lower=1, upper=99)(image)
    assert out.min() == 0.0 and out.max() == 1.0
    assert 0.4 < float(np.median(out)) < 0.6


def test_normalize_rejects_colour_photometric_interpretations():
    with pytest.raises(ValueError, match="RGB"):
        NormalizeRadiograph()(np.zeros((4, 4)), photometric="RGB")


def test_normalize_rejects_bad_settings():
    with pytest.raises(ValueError, match="mode"):
        NormalizeRadiograph(mode="zscore")
    with pytest.raises(ValueError, match="lower"):
        NormalizeRadiograph(lower=90, upper=10)


def test_rgb_dicom_is_refused_with_the_file_name(tmp_path):
    pixels, _ = asymmetric_case(rows=20, cols=16)
    path = write_test_dicom(tmp_path / "gray.dcm", pixels, jpeg_quality=None)
    ds = pydicom.dcmread(path)
    rgb = np.repeat(pixels[..., None], 3, axis=-1)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = rgb.tobytes()
    ds.save_as(tmp_path / "rgb.dcm")
    with pytest.raises(ValueError, match=r"rgb\.dcm.*3 samples per pixel"):
        LoadImaged("image", reader=RadiographReader())({"image": str(tmp_path / "rgb.dcm")})


def test_dicom_without_pixel_data_is_refused_with_the_file_name(tmp_path):
    pixels, _ = asymmetric_case(rows=20, cols=16)
    ds = pydicom.dcmread(write_test_dicom(tmp_path / "gray.dcm", pixels, jpeg_quality=None))
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    with pytest.raises(ValueError, match=r"nopixels\.dcm.*pixel data"):
        LoadImaged("image", reader=RadiographReader())({"image": str(tmp_path / "nopixels.dcm")})


def test_truncated_dicom_is_refused_with_the_file_name(tmp_path):
    pixels, _ = asymmetric_case()
    path = write_test_dicom(tmp_path / "whole.dcm", pixels, jpeg_quality=95)
    data = path.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 2000])
    with pytest.raises(Exception, match=r"cut\.dcm"):
        LoadImaged("image", reader=RadiographReader())({"image": str(tmp_path / "cut.dcm")})


@pytest.mark.parametrize("suffix", [".nii.gz", ".png"])
def test_label_files_and_rle_give_the_same_aligned_mask(tmp_path, suffix):
    """MONAI Label items carry a label file instead of RLE strings; both must give the same training label."""
    import nibabel as nib
    from PIL import Image

    pixels, mask = asymmetric_case(rows=300, cols=220)
    path = write_test_dicom(tmp_path / "case.dcm", pixels, jpeg_quality=None)
    label_file = tmp_path / f"label{suffix}"
    if suffix == ".png":  # a PNG is stored in image orientation (rows, cols), as the inference writer does
        Image.fromarray(mask.astype(np.uint8) * 255).save(label_file)
    else:  # MONAI Label writes the (cols, rows) prediction it computed on the MONAI-loaded image
        nib.save(nib.Nifti1Image(mask.T.astype(np.uint8), np.eye(4)), label_file)
    pipeline = Compose([*image_loading(compact=False), LabelToMaskd("label", ref_key="image")])
    from_file = pipeline({"image": str(path), "label": str(label_file)})["label"]
    from_rle = pipeline({"image": str(path), "label": [rle.encode(mask)]})["label"]
    assert from_file.shape == (1, 220, 300) and from_file.dtype == torch.uint8
    np.testing.assert_array_equal(from_file.numpy(), from_rle.numpy())


def test_label_file_of_another_shape_is_refused_with_the_image_name(tmp_path):
    import nibabel as nib

    pixels, _ = asymmetric_case(rows=300, cols=220)
    path = write_test_dicom(tmp_path / "case.dcm", pixels, jpeg_quality=None)
    nib.save(nib.Nifti1Image(np.zeros((300, 220), np.uint8), np.eye(4)), tmp_path / "wrong.nii.gz")
    pipeline = Compose([*image_loading(compact=False), LabelToMaskd("label", ref_key="image")])
    with pytest.raises(RuntimeError) as raised:
        pipeline({"image": str(path), "label": str(tmp_path / "wrong.nii.gz")})
    assert "case.dcm" in str(raised.value.__cause__) and "wrong.nii.gz" in str(raised.value.__cause__)


def test_compact_cache_form_is_uint8_and_comes_back_within_half_a_grey_level(tmp_path):
    from scripts.data.cache import ImageToUint8d, Uint8ToFloatd

    pixels, _ = asymmetric_case(rows=300, cols=220)
    pixels = (pixels.astype(np.uint16) * 7 + np.arange(220, dtype=np.uint16)[None, :]).astype(np.uint16)  # 11 bits
    path = write_test_dicom(tmp_path / "case.dcm", pixels, jpeg_quality=None, bits_stored=12)
    full = Compose(image_loading(compact=False))({"image": str(path)})["image"]
    compact = Compose(image_loading(compact=True))({"image": str(path)})["image"]
    assert compact.dtype == torch.uint8 and compact.shape == full.shape
    assert compact.meta["filename_or_obj"] == full.meta["filename_or_obj"]
    back = Uint8ToFloatd("image")({"image": compact})["image"]
    assert back.dtype == torch.float32
    assert float((back - full).abs().max()) <= 0.5 / 255 + 1e-6
    untouched = Uint8ToFloatd("image")({"image": full})["image"]
    assert untouched is full
    as_numpy = ImageToUint8d("image")({"image": full.numpy()})["image"]
    np.testing.assert_array_equal(as_numpy, compact.numpy())
