"""Specifications of the synthetic chest radiographs of ``scripts.synthetic.anatomy``.

Statistical specs run over fixed seeds at small sizes (256 x 256 unless said), so they are deterministic; their
thresholds leave a margin around what the generator is designed to give, and each would fail if the behaviour
it names were lost (a mask drawn as a blob, a region no different from lung, no overlaps, areas not scaled...).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from scripts.synthetic.anatomy import (
    AREA_MAX_1024,
    AREA_MEDIAN_1024,
    render_case,
    render_chest,
)

SIZE = 256


def _scale(rows: int, cols: int) -> float:
    """Factor from areas at 1024 x 1024 to areas at ``rows x cols``."""
    return rows * cols / 1024.0**2


def _union(regions: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixels of any of the regions."""
    union = np.zeros(shape, bool)
    for region in regions:
        union |= region
    return union


def _high_pass(image: np.ndarray) -> np.ndarray:
    """Pixel-scale texture: the image minus its 3 x 3 mean (support of one pixel, so edges do not leak far)."""
    image = image.astype(float)
    return image - ndimage.uniform_filter(image, 3)


@pytest.fixture(scope="module")
def survey() -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """60 cases of three annotations each."""
    return [render_case(np.random.default_rng(1000 + seed), SIZE, SIZE, 3) for seed in range(60)]


@pytest.fixture(scope="module")
def chests():
    """20 cases of two annotations each, with their lung fields."""
    return [render_chest(np.random.default_rng(2000 + seed), SIZE, SIZE, 2) for seed in range(20)]


@pytest.fixture(scope="module")
def pairs():
    """20 cases drawn with two annotations and, from the same generator state, without any."""
    return [
        (
            render_chest(np.random.default_rng(3000 + seed), SIZE, SIZE, 2),
            render_chest(np.random.default_rng(3000 + seed), SIZE, SIZE, 0),
        )
        for seed in range(20)
    ]


# ----------------------------------------------------------------------------------------------------------------
# Reproducibility and interface


def test_same_generator_state_gives_byte_identical_output():
    rng = np.random.default_rng(7)
    rng.random(3)  # any state, not only a fresh seed
    twin = np.random.default_rng()
    twin.bit_generator.state = rng.bit_generator.state

    image, regions = render_case(rng, 300, 220, 4)
    twin_image, twin_regions = render_case(twin, 300, 220, 4)

    assert image.tobytes() == twin_image.tobytes()
    assert len(regions) == len(twin_regions) == 4
    assert all(a.tobytes() == b.tobytes() for a, b in zip(regions, twin_regions))


def test_different_seeds_and_successive_calls_give_different_cases():
    first, first_regions = render_case(np.random.default_rng(1), SIZE, SIZE, 1)
    other, other_regions = render_case(np.random.default_rng(2), SIZE, SIZE, 1)
    rng = np.random.default_rng(1)
    render_case(rng, SIZE, SIZE, 1)
    again, _ = render_case(rng, SIZE, SIZE, 1)  # the generator moved on

    assert np.mean(first != other) > 0.5
    assert not np.array_equal(first_regions[0], other_regions[0])
    assert np.mean(first != again) > 0.5


@pytest.mark.parametrize(("rows", "cols"), [(300, 220), (220, 300), (SIZE, SIZE)])
def test_image_and_masks_have_the_requested_shape_and_types(rows, cols):
    image, regions = render_case(np.random.default_rng(5), rows, cols, 2)

    assert image.shape == (rows, cols) and image.dtype == np.uint8
    assert len(regions) == 2
    assert all(region.shape == (rows, cols) and region.dtype == bool for region in regions)


@pytest.mark.parametrize("n_regions", [0, 1, 4, 10])
def test_one_non_empty_mask_per_requested_region(n_regions):
    _, regions = render_case(np.random.default_rng(11), SIZE, SIZE, n_regions)

    assert len(regions) == n_regions
    assert all(region.any() for region in regions)


def test_default_size_is_1024_square():
    image, regions = render_case(np.random.default_rng(0))

    assert image.shape == (1024, 1024) and regions == []


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        render_case(np.random.default_rng(0), 32, 256)
    with pytest.raises(ValueError):
        render_case(np.random.default_rng(0), SIZE, SIZE, -1)


def test_timing_per_1024_image_is_reported():
    render_case(np.random.default_rng(0), 1024, 1024, 1)  # warm-up: imports, allocator
    seconds = []
    for seed in range(3):
        start = time.perf_counter()
        image, regions = render_case(np.random.default_rng(seed), 1024, 1024, 2)
        seconds.append(time.perf_counter() - start)
    print(f"\nrender_case 1024 x 1024: mean {np.mean(seconds):.3f} s, max {np.max(seconds):.3f} s")

    assert image.shape == (1024, 1024) and len(regions) == 2


# ----------------------------------------------------------------------------------------------------------------
# Anatomy and exposure


def _two_lungs(lungs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lung fields on the image left (patient's right) and on the image right.

    The two largest pieces of the mask: the thin medial tip at the cardiophrenic angle may leave a stray pixel.
    """
    labels, count = ndimage.label(lungs)
    sizes = np.bincount(labels.ravel())[1:]
    assert count >= 2 and np.sort(sizes)[-2] > 100 * max(np.sort(sizes)[:-2], default=0)
    first, second = (labels == 1 + k for k in np.argsort(sizes)[-2:])
    if np.nonzero(first)[1].mean() > np.nonzero(second)[1].mean():
        first, second = second, first
    return first, second


def test_lungs_are_dark_fields_either_side_of_a_bright_mediastinum(chests):
    for chest in chests:
        rows, cols = chest.lungs.shape
        image_left, image_right = _two_lungs(chest.lungs)
        assert image_left.sum() > 0.05 * rows * cols and image_right.sum() > 0.05 * rows * cols
        assert np.nonzero(image_left)[1].max() < np.nonzero(image_right)[1].min()
        heart = chest.image[int(0.45 * rows) : int(0.65 * rows), cols // 2 - cols // 20 : cols // 2 + cols // 20]
        assert np.median(chest.image[chest.lungs]) + 60 < np.median(heart)
        lung_rows = np.flatnonzero(chest.lungs.any(axis=1))
        assert lung_rows[0] < 0.25 * rows and lung_rows[-1] > 0.6 * rows  # apices at the top


def test_heart_bulges_to_the_image_right_and_the_right_lung_is_wider_and_shorter(chests):
    bulges_right, wider, shorter = [], [], []
    for chest in chests:
        patient_right, patient_left = _two_lungs(chest.lungs)
        top = max(np.flatnonzero(lung.any(axis=1))[0] for lung in (patient_right, patient_left))
        bottom = min(np.flatnonzero(lung.any(axis=1))[-1] for lung in (patient_right, patient_left))

        def gap(row: int) -> tuple[int, int]:
            return np.flatnonzero(patient_right[row])[-1], np.flatnonzero(patient_left[row])[0]

        height = bottom - top
        upper = [gap(row) for row in range(top + height // 6, top + height // 3)]
        midline = np.mean([(a + b) / 2.0 for a, b in upper])
        lower = [gap(row) for row in range(top + 3 * height // 5, top + 4 * height // 5)]
        bulges_right.append(np.mean([b - midline for a, b in lower]) > np.mean([midline - a for a, b in lower]))
        lungs = (patient_right, patient_left)
        widths = [max(np.ptp(np.flatnonzero(row)) for row in lung if row.any()) for lung in lungs]
        wider.append(widths[0] > widths[1])
        shorter.append(np.flatnonzero(patient_right.any(axis=1))[-1] < np.flatnonzero(patient_left.any(axis=1))[-1])

    assert np.mean(bulges_right) >= 0.9
    assert np.mean(wider) >= 0.8 and np.mean(shorter) >= 0.8


def test_exposure_varies_and_uses_the_grey_range(survey):
    images = [image for image, _ in survey]

    assert max(np.percentile(image, 1) for image in images) <= 40
    assert min(np.percentile(image, 99) for image in images) >= 180
    means = [image.mean() for image in images]
    assert max(means) - min(means) > 20


# ----------------------------------------------------------------------------------------------------------------
# Pneumothorax geometry


def test_regions_are_crescents_inside_a_lung_along_its_pleura(chests):
    for chest in chests:
        pleura = chest.lungs & ~ndimage.binary_erosion(chest.lungs)
        for region in chest.regions:
            assert not (region & ~chest.lungs).any()
            assert (region & pleura).any()
            assert ndimage.label(region, structure=np.ones((3, 3)))[1] == 1  # one outline
            # hugging the chest wall: a good part of its outline is the pleura (about half, for a crescent)
            outline = region & ~ndimage.binary_erosion(region)
            assert (outline & pleura).sum() >= 0.25 * outline.sum()


def test_region_areas_follow_a_skewed_distribution_scaled_to_the_image(survey):
    areas_1024 = np.array([region.sum() for _, regions in survey for region in regions]) / _scale(SIZE, SIZE)
    median = np.median(areas_1024)

    assert 0.6 * AREA_MEDIAN_1024 < median < 1.6 * AREA_MEDIAN_1024
    assert np.percentile(areas_1024, 10) < 0.4 * median  # many small
    assert np.percentile(areas_1024, 90) > 3.0 * median  # a long tail of large ones
    assert areas_1024.mean() > 1.5 * median
    assert areas_1024.max() <= 1.05 * AREA_MAX_1024


def test_region_areas_scale_with_the_pixel_count_of_non_square_images():
    rows, cols = 384, 192
    cases = [render_case(np.random.default_rng(seed), rows, cols, 3) for seed in range(20)]
    areas = [region.sum() for _, regions in cases for region in regions]

    assert 0.6 * AREA_MEDIAN_1024 < np.median(areas) / _scale(rows, cols) < 1.6 * AREA_MEDIAN_1024


def test_some_multi_region_cases_have_partly_overlapping_annotations(survey):
    overlapping_cases, partial, total = 0, 0, 0
    for _, regions in survey:
        found = False
        for i, a in enumerate(regions):
            for b in regions[i + 1 :]:
                shared = (a & b).sum()
                if shared:
                    found = True
                    total += 1
                    partial += shared < a.sum() and shared < b.sum()
        overlapping_cases += found

    assert 0.15 <= overlapping_cases / len(survey) <= 0.5
    assert partial >= 0.8 * total


# ----------------------------------------------------------------------------------------------------------------
# Pneumothorax appearance, against the same chest drawn without it


def test_only_annotated_pixels_change(pairs):
    for with_, without in pairs:
        union = _union(with_.regions, with_.image.shape)
        changed = with_.image != without.image
        reach = ndimage.binary_dilation(union, iterations=2)  # the detector blur spreads a change by a pixel

        assert not (changed & ~reach).any()
        assert (changed & union).sum() >= 0.8 * union.sum()
        assert np.array_equal(with_.lungs, without.lungs)


def test_regions_are_darker_than_the_lung_but_only_subtly(pairs):
    change, contrast = [], []
    for with_, without in pairs:
        union = _union(with_.regions, with_.image.shape)
        for region in with_.regions:
            change.append(with_.image[region].mean() - float(without.image[region].mean()))
            beside = ndimage.binary_dilation(region, iterations=4) & with_.lungs & ~union
            if beside.sum() >= 10:  # not when the region is the outer part of a larger one
                contrast.append(with_.image[region].mean() - with_.image[beside].mean())

    change, contrast = np.array(change), np.array(contrast)
    assert (change < 0).mean() >= 0.9
    assert -15 < np.median(change) < -1 and change.min() > -25  # a few grey levels
    assert (contrast < 0).mean() >= 0.7
    assert -15 < np.median(contrast) < -1


def test_regions_have_no_lung_texture(pairs):
    own, neighbours = [], []
    for with_, without in pairs:
        union = _union(with_.regions, with_.image.shape)
        lung_core = ndimage.binary_erosion(with_.lungs, iterations=2)
        texture, lung_texture = _high_pass(with_.image), _high_pass(without.image)
        for region in with_.regions:
            core = ndimage.binary_erosion(region, iterations=2) & lung_core  # clear of its edges and line
            beside = ndimage.binary_dilation(region, iterations=4) & lung_core & ~union
            if core.sum() < 30 or beside.sum() < 30:
                continue
            own.append(texture[core].var() / lung_texture[core].var())
            neighbours.append(texture[core].var() / texture[beside].var())

    assert len(own) >= 10
    assert max(own) < 1.0 and np.median(own) < 0.9
    assert np.mean(np.array(neighbours) < 1.0) >= 0.7 and np.median(neighbours) < 0.9
