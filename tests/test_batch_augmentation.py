"""Specification of the split augmentation (scripts/data/crop.py, scripts/training/augmentation.py and
prepare_batch.py): crop and parameters in the loader, application per batch on the device."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, list_data_collate

from scripts.data.crop import RandForegroundCropd
from scripts.training.augmentation import AugmentationParamsd, augment_batch
from scripts.training.prepare_batch import AugmentOnDevice

IDENTITY_PROBS = dict(
    flip_prob=0.0, affine_prob=0.0, grid_prob=0.0, contrast_prob=0.0,
    scale_intensity_prob=0.0, shift_intensity_prob=0.0, noise_prob=0.0,
)  # fmt: skip


def coordinate_image(n0: int = 40, n1: int = 32) -> torch.Tensor:
    """(1, n0, n1) float image whose every pixel value is unique and says where it came from."""
    return (torch.arange(n0 * n1, dtype=torch.float32).reshape(1, n0, n1) + 1) / (n0 * n1)


def batch_of(params_list, image, label):
    items = [{"image": image.clone(), "label": label.clone(), "augment": p} for p in params_list]
    return list_data_collate(items)


def params(**probs) -> dict:
    transform = AugmentationParamsd(**{**IDENTITY_PROBS, **probs})
    transform.set_random_state(0)
    return transform({})["augment"]


# ---------------------------------------------------------------------------------------------------------- crop
def test_crop_has_the_crop_size_keeps_uint8_and_leaves_the_source_untouched():
    image = MetaTensor(torch.randint(0, 255, (1, 100, 80), dtype=torch.uint8))
    label = np.zeros((1, 100, 80), dtype=np.uint8)
    label[0, 10:20, 60:70] = 1
    before = image.clone()
    crop = RandForegroundCropd(["image", "label"], "label", (48, 32), pos=1, neg=0)
    crop.set_random_state(0)
    out = crop({"image": image, "label": label})
    assert out["image"].shape == out["label"].shape == (1, 48, 32)
    assert out["image"].dtype == torch.uint8 and type(out["image"]) is torch.Tensor
    assert torch.equal(image, before) and label.sum() == 100


def test_positive_crops_always_hold_foreground_and_image_and_label_share_the_window():
    image = coordinate_image(120, 90)
    label = torch.zeros(1, 120, 90, dtype=torch.uint8)
    label[0, 100:110, 5:12] = 1  # one small region near a corner
    crop = RandForegroundCropd(["image", "label"], "label", (32, 32), pos=1, neg=0)
    crop.set_random_state(1)
    for _ in range(20):
        out = crop({"image": image, "label": label})
        assert out["label"].sum() > 0
        # the image crop is the source window whose top-left value sits at the same place as the label's
        start = int(round(float(out["image"][0, 0, 0]) * 120 * 90)) - 1
        r, c = divmod(start, 90)
        assert torch.equal(out["image"], image[:, r : r + 32, c : c + 32])
        assert torch.equal(out["label"], label[:, r : r + 32, c : c + 32])


def test_negative_crops_spread_over_the_image_and_ignore_the_label():
    label = torch.zeros(1, 200, 200, dtype=torch.uint8)
    label[0, :10, :10] = 1
    crop = RandForegroundCropd(["label"], "label", (20, 20), pos=0, neg=1)
    crop.set_random_state(2)
    hits = [int(crop({"label": label})["label"].sum() > 0) for _ in range(200)]
    assert 0 < sum(hits) < 40  # corner region: rarely, but sometimes


def test_an_image_smaller_than_the_crop_is_padded_evenly_with_zeros():
    image = torch.ones(1, 10, 7, dtype=torch.uint8)
    out = RandForegroundCropd(["image"], "image", (14, 12))({"image": image})["image"]
    assert out.shape == (1, 14, 12) and out.sum() == 70
    assert torch.equal(out[0, 2:12, 2:9], image[0]) and out[0, :2].sum() == 0 and out[0, :, :2].sum() == 0


def test_crop_refuses_bad_ratios_and_dimension_mismatch():
    with pytest.raises(ValueError, match="pos and neg"):
        RandForegroundCropd(["image"], "image", (8, 8), pos=0, neg=0)
    with pytest.raises(ValueError, match="3-D crop of a 2-D image"):
        RandForegroundCropd(["image"], "image", (8, 8, 8))({"image": torch.zeros(1, 9, 9)})


# ---------------------------------------------------------------------------------------------------- parameters
def test_parameters_follow_the_random_state_and_are_identity_when_not_drawn():
    a, b = AugmentationParamsd(), AugmentationParamsd()
    a.set_random_state(7), b.set_random_state(7)
    draws_a, draws_b = [a({})["augment"] for _ in range(5)], [b({})["augment"] for _ in range(5)]
    for x, y in zip(draws_a, draws_b):
        assert all(torch.equal(x[k], y[k]) for k in x)
    identity = params()
    assert not identity["flip"].any() and torch.equal(identity["matrix"], torch.eye(2))
    assert identity["gamma"] == 1 and identity["scale"] == 1 and identity["shift"] == 0 and identity["noise_std"] == 0
    assert torch.allclose(identity["grid"], torch.linspace(0, 1, 6).expand(2, 6))


def test_each_part_is_applied_about_as_often_as_its_probability():
    transform = AugmentationParamsd()
    transform.set_random_state(3)
    draws = [transform({})["augment"] for _ in range(2000)]
    share = lambda test: np.mean([bool(test(d)) for d in draws])  # noqa: E731
    assert share(lambda d: d["flip"].any()) == pytest.approx(0.5, abs=0.04)
    assert not any(d["flip"][1] for d in draws)  # the configured axis only
    assert share(lambda d: not torch.equal(d["matrix"], torch.eye(2))) == pytest.approx(0.5, abs=0.04)
    assert share(lambda d: d["gamma"] != 1) == pytest.approx(0.3, abs=0.04)
    assert share(lambda d: d["noise_std"] > 0) == pytest.approx(0.2, abs=0.04)
    grids = torch.stack([d["grid"] for d in draws])
    assert (grids[..., 0] == 0).all() and torch.allclose(grids[..., -1], torch.ones(())) and (grids.diff(dim=-1) > 0).all()
    angles = torch.tensor([float(torch.atan2(d["matrix"][1, 0], d["matrix"][0, 0])) for d in draws])
    assert angles.abs().max() <= 0.17 + 1e-6 and angles.abs().max() > 0.15


def test_parameter_settings_are_checked():
    with pytest.raises(ValueError, match="flip_axis"):
        AugmentationParamsd(flip_axis=2)
    with pytest.raises(ValueError, match="grid_limit"):
        AugmentationParamsd(grid_limit=(-1.5, 0.1))


# ------------------------------------------------------------------------------------------------------ applying
def test_identity_parameters_return_the_batch_unchanged():
    image, label = coordinate_image(), (coordinate_image() > 0.5).float()
    batch = batch_of([params(), params()], image, label)
    out_image, out_label = augment_batch(batch["image"], batch["label"], batch["augment"])
    assert torch.equal(out_image, batch["image"]) and torch.equal(out_label, batch["label"])


@pytest.mark.parametrize("axis", [0, 1])
def test_flip_is_a_flip_of_that_spatial_axis(axis):
    image = coordinate_image()
    label = (image > 0.3).float()
    batch = batch_of([params(flip_prob=1.0, flip_axis=axis)], image, label)
    out_image, out_label = augment_batch(batch["image"], batch["label"], batch["augment"])
    assert torch.allclose(out_image[0], image.flip(axis + 1), atol=1e-6)
    assert torch.equal(out_label[0], label.flip(axis + 1))


def test_translation_moves_content_by_whole_pixels_along_the_right_axes():
    image = coordinate_image()
    p = params()
    p["translate"] = torch.tensor([3.0, -2.0])  # source = output + (3, -2)
    batch = batch_of([p], image, image)
    out, _ = augment_batch(batch["image"], None, batch["augment"])
    assert torch.allclose(out[0, 0, :-3, 2:], image[0, 3:, :-2], atol=1e-6)
    assert (out[0, 0, -3:] == 0).all() and (out[0, 0, :, :2] == 0).all()


def test_quarter_turn_matches_rot90_and_labels_stay_binary():
    image = coordinate_image(36, 36)
    label = (torch.rand(1, 36, 36, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    p = params()
    p["matrix"] = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    batch = batch_of([p], image, label)
    out_image, out_label = augment_batch(batch["image"], batch["label"], batch["augment"])
    assert torch.allclose(out_image[0], torch.rot90(image, k=-1, dims=(1, 2)), atol=1e-6)
    assert torch.equal(out_label[0], torch.rot90(label, k=-1, dims=(1, 2)))


def test_intensity_parts_follow_their_formulas():
    image = coordinate_image()
    p = params()
    p["gamma"], p["scale"], p["shift"] = torch.tensor(1.5), torch.tensor(1.1), torch.tensor(-0.05)
    batch = batch_of([p], image, image)
    out, _ = augment_batch(batch["image"], None, batch["augment"])
    low, span = image.min(), image.max() - image.min()
    expected = (((image - low) / (span + 1e-7)) ** 1.5 * span + low) * 1.1 - 0.05
    assert torch.allclose(out[0], expected, atol=1e-6)


def test_random_batches_keep_labels_binary_images_finite_and_noise_follows_its_seed():
    transform = AugmentationParamsd(noise_prob=1.0)
    transform.set_random_state(5)
    image = coordinate_image(64, 64)
    label = (image > 0.5).float()
    batch = batch_of([transform({})["augment"] for _ in range(8)], image, label)
    first = augment_batch(batch["image"], batch["label"], batch["augment"], noise_seed=11)
    again = augment_batch(batch["image"], batch["label"], batch["augment"], noise_seed=11)
    other = augment_batch(batch["image"], batch["label"], batch["augment"], noise_seed=12)
    assert torch.equal(first[0], again[0]) and not torch.equal(first[0], other[0])
    assert set(first[1].unique().tolist()) <= {0.0, 1.0} and torch.isfinite(first[0]).all()
    assert not torch.equal(first[0][0], first[0][1])  # images of a batch get their own parameters


def test_prepare_batch_converts_uint8_on_the_device_and_returns_channels_last():
    image = torch.randint(0, 256, (1, 16, 16), dtype=torch.uint8)
    label = (image > 128).to(torch.uint8)
    batch = batch_of([params(), params()], image, label)
    out_image, out_label = AugmentOnDevice()(batch, torch.device("cpu"), False, memory_format=torch.channels_last)
    assert out_image.dtype == out_label.dtype == torch.float32
    assert torch.allclose(out_image[0, 0], image[0].float() / 255.0)
    assert torch.equal(out_label[1, 0], label[0].float())
    assert out_image.is_contiguous(memory_format=torch.channels_last)
    plain = AugmentOnDevice()({"image": batch["image"], "label": batch["label"]}, "cpu")
    assert torch.allclose(plain[0], out_image)


def test_bad_batch_shape_is_refused():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        augment_batch(torch.zeros(1, 8, 8), None, params())


# -------------------------------------------------------------------------------------------- packed label cache
@pytest.mark.parametrize("cols", [96, 101, 7])
def test_packed_masks_unpack_to_the_same_mask_in_numpy_and_torch(cols):
    from scripts.data.cache import PackMaskd, unpack_mask

    mask = (np.random.default_rng(cols).random((1, 13, cols)) > 0.6).astype(np.uint8)
    packed = PackMaskd("label")({"label": MetaTensor(torch.from_numpy(mask))})["label"]
    assert packed.dtype == np.uint8 and packed.shape == (1, 13, (cols + 7) // 8)
    np.testing.assert_array_equal(unpack_mask(packed, cols), mask)
    assert torch.equal(unpack_mask(torch.from_numpy(packed), cols), torch.from_numpy(mask))
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_mask(packed, cols + 8)


def test_cropping_a_packed_label_gives_the_crop_of_the_unpacked_one():
    from scripts.data.cache import PackMaskd

    rng = np.random.default_rng(0)
    label = np.zeros((1, 90, 77), dtype=np.uint8)
    label[0, 30:50, 13:61] = rng.random((20, 48)) > 0.3
    image = coordinate_image(90, 77)
    packed = PackMaskd("label")({"label": label})["label"]
    plain = RandForegroundCropd(["image", "label"], "label", (40, 37), pos=2, neg=1)
    compact = RandForegroundCropd(["image", "label"], "label", (40, 37), pos=2, neg=1, packed_keys="label")
    plain.set_random_state(4), compact.set_random_state(4)
    for _ in range(30):
        a, b = plain({"image": image, "label": label}), compact({"image": image, "label": packed})
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
        assert b["label"].dtype == torch.uint8 and b["label"].shape == (1, 40, 37)
    small = compact({"image": coordinate_image(20, 30), "label": np.packbits(np.ones((1, 20, 30), np.uint8), axis=-1)})
    assert small["label"].shape == (1, 40, 37) and small["label"].sum() == 600  # padded like the image


def test_other_to_kwargs_apply_after_the_conversion():
    image = torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8)
    batch = batch_of([params()], image, (image > 100).to(torch.uint8))
    out_image, out_label = AugmentOnDevice()(batch, "cpu", False, dtype=torch.float64)
    assert out_image.dtype == out_label.dtype == torch.float64
    assert torch.allclose(out_image[0], image.double() / 255.0)
