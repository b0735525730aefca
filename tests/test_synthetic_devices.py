"""Specifications of the devices on synthetic radiographs (``scripts.synthetic.devices``): each appears when and
where asked, the pneumothorax masks never move, and without devices nothing changes at all."""

from __future__ import annotations

import csv
from dataclasses import fields, replace

import numpy as np
import pytest
from scipy import ndimage

from scripts.siim.datalist import build_datalist
from scripts.synthetic.__main__ import main
from scripts.synthetic.anatomy import render_chest
from scripts.synthetic.dataset import DEVICES_CSV_NAME, generate_dataset
from scripts.synthetic.devices import DEVICE_COLUMNS, DeviceOptions, parse_points

SIZE = 256
NONE = DeviceOptions.none()


def _pair(seed: int, options: DeviceOptions, n_regions: int = 1, size: int = SIZE):
    """The same case without and with the devices."""
    plain = render_chest(np.random.default_rng(seed), size, size, n_regions, lesion_contrast=5.0)
    fitted = render_chest(np.random.default_rng(seed), size, size, n_regions, lesion_contrast=5.0, devices=options)
    return plain, fitted


def _change(plain, fitted) -> np.ndarray:
    return fitted.image.astype(float) - plain.image.astype(float)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_device_asked_for_changes_nothing(seed):
    plain, fitted = _pair(seed, NONE)
    np.testing.assert_array_equal(plain.image, fitted.image)
    assert fitted.devices.row() == {**dict.fromkeys(DEVICE_COLUMNS, ""), "drain": "0", "ecg_leads": "0", "blur": "0.000"}


@pytest.mark.parametrize("name", [option.name for option in fields(DeviceOptions)])
def test_masks_stay_where_the_pneumothorax_is_whatever_is_drawn(name):
    options = replace(NONE, **{name: 1.0})
    for seed in range(3):
        plain, fitted = _pair(seed, options, n_regions=2)
        assert len(fitted.regions) == len(plain.regions) == 2
        for before, after in zip(plain.regions, fitted.regions):
            np.testing.assert_array_equal(before, after)
        np.testing.assert_array_equal(plain.lungs, fitted.lungs)


@pytest.mark.parametrize("same_side", [1.0, 0.0])
def test_a_drain_runs_from_the_chest_wall_to_the_apex_on_the_side_asked(same_side):
    for seed in range(4):
        plain, fitted = _pair(seed, replace(NONE, drain_positive=1.0, drain_same_side=same_side))
        drawn = fitted.devices
        region_col = np.argwhere(fitted.regions[0])[:, 1].mean()
        lesion_on_image_left = region_col < SIZE / 2
        tip_row, tip_col = drawn.drain_path[-1]
        assert (tip_col < SIZE / 2) == (lesion_on_image_left == (same_side == 1.0))
        assert drawn.drain_side == ("R" if tip_col < SIZE / 2 else "L")  # the patient's right is the image left
        assert tip_row < 0.35 * SIZE  # up towards the apex
        # the tube enters from off the image side and is brighter than the chest all along it
        rows, cols = np.round(drawn.drain_path).astype(int).T
        on_image = (rows >= 0) & (rows < SIZE) & (cols >= 0) & (cols < SIZE)
        assert not on_image.all()
        assert np.median(_change(plain, fitted)[rows[on_image], cols[on_image]]) > 15


def test_devices_csv_path_of_a_drain_lies_on_the_drawn_tube():
    plain, fitted = _pair(3, replace(NONE, drain_positive=1.0))
    points = parse_points(fitted.devices.row()["drain_path"])
    np.testing.assert_allclose(points[[0, -1]], fitted.devices.drain_path[[0, -1]], atol=0.5)
    assert len(points) < len(fitted.devices.drain_path) / 3  # a compact row, not every point
    inside = points[(points >= 0).all(axis=1) & (points < SIZE - 0.5).all(axis=1)].round().astype(int)
    darker_on_the_line = _change(plain, fitted)[inside[:, 0], inside[:, 1]]
    assert len(inside) > 10 and (darker_on_the_line > 0).mean() > 0.9  # the tube adds attenuation along the path
    assert parse_points("").shape == (0, 2)
    with pytest.raises(ValueError, match="row col"):
        parse_points("12 a;3 4")


def test_a_drain_has_side_holes_near_its_tip_where_the_stripe_breaks():
    plain, fitted = _pair(1, replace(NONE, drain_positive=1.0), size=1024)
    change = _change(plain, fitted)
    path, holes = fitted.devices.drain_path, fitted.devices.side_holes
    assert 3 <= len(holes) <= 6
    length = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(path, axis=0).T))])
    hole_at = [length[np.argmin(np.hypot(*(path - hole).T))] for hole in holes]
    assert min(hole_at) > length[-1] - 120  # within the last stretch of the tube
    at_holes = [change[tuple(np.round(hole).astype(int))] for hole in holes]
    between = [change[tuple(np.round(path[np.searchsorted(length, at - 9)]).astype(int))] for at in hole_at]
    assert np.mean(at_holes) < np.mean(between) - 20


def test_drains_go_with_pneumothorax_as_often_as_asked(tmp_path):
    def drains(drain_positive, drain_negative):
        options = DeviceOptions(drain_positive=drain_positive, drain_negative=drain_negative)
        cases = generate_dataset(
            tmp_path / f"{drain_positive}-{drain_negative}", n=60, seed=3, rows=64, cols=64, positive_share=0.5, devices=options
        )
        return [(bool(case.annotations), bool(case.devices.drain_side)) for case in cases]

    assert all(drain == positive for positive, drain in drains(1.0, 0.0))
    independent = drains(0.5, 0.5)
    share = {label: np.mean([drain for positive, drain in independent if positive == label]) for label in (True, False)}
    assert 0.25 < share[True] < 0.75 and 0.25 < share[False] < 0.75


def test_ecg_leads_show_bright_snaps_and_wires_running_off_the_image():
    for seed in range(3):
        plain, fitted = _pair(seed, replace(NONE, ecg=1.0))
        assert 3 <= fitted.devices.ecg_leads <= 5
        change = _change(plain, fitted)
        rows, cols = np.round(fitted.devices.electrodes).astype(int).T
        inside = (rows >= 0) & (rows < SIZE) & (cols >= 0) & (cols < SIZE)
        assert inside.sum() >= 3
        assert (change[rows[inside], cols[inside]] > 25).all()  # a bright metal snap on every electrode
        wire = change > 10
        assert wire[[0, -1], :].any() or wire[:, [0, -1]].any()  # the wires leave the picture


def test_a_central_line_runs_from_the_neck_or_clavicle_to_the_mediastinum():
    for seed in range(4):
        plain, fitted = _pair(seed, replace(NONE, central_line=1.0))
        assert fitted.devices.central_line_side in ("R", "L")
        line = _change(plain, fitted) > 10
        rows, cols = np.nonzero(line)
        assert rows.max() < 0.5 * SIZE  # the tip in the superior vena cava, above the heart
        assert np.abs(cols[rows == rows.max()] - SIZE / 2).min() < 0.12 * SIZE


def test_a_lead_marker_sits_in_the_upper_corner_of_its_side():
    letters = set()
    for seed in range(6):
        plain, fitted = _pair(seed, replace(NONE, marker=1.0))
        letter = fitted.devices.marker
        letters.add(letter)
        rows, cols = np.nonzero(_change(plain, fitted) > 40)
        assert rows.max() < 0.25 * SIZE
        assert (cols.mean() > SIZE / 2) == (letter == "L")  # "L" on the patient's left, the image right
    assert letters == {"L", "R"}


def test_burned_in_text_is_white_and_in_a_top_corner():
    texts = set()
    for seed in range(8):
        plain, fitted = _pair(seed, replace(NONE, text=1.0))
        texts.add(fitted.devices.text)
        changed = np.abs(_change(plain, fitted)) > 0
        rows, cols = np.nonzero(changed)
        assert rows.max() < 0.15 * SIZE
        assert (cols.mean() < SIZE / 2) == (fitted.devices.text_corner == "left")
        assert fitted.image[changed].max() >= 245
    assert texts <= {"AP", "PORTABLE", "AP PORTABLE"} and len(texts) >= 2


def test_collimation_whitens_borders_that_stop_short_of_the_lungs():
    seen = set()
    for seed in range(8):
        plain, fitted = _pair(seed, replace(NONE, collimation=1.0))
        edges = fitted.devices.collimation
        assert edges
        seen.update(edges)
        border = _change(plain, fitted) > 30
        strips = {"top": border[0], "bottom": border[-1], "left": border[:, 0], "right": border[:, -1]}
        for edge in edges:
            assert strips[edge].mean() > 0.5
            assert fitted.image[border].mean() > 200
        assert not (border & fitted.lungs).any()
    assert len(seen) >= 3


def test_soft_edges_blur_the_picture():
    plain, fitted = _pair(0, replace(NONE, soft_edges=1.0), size=512)
    assert fitted.devices.blur > 0
    detail = [np.abs(ndimage.laplace(chest.image.astype(float))).mean() for chest in (plain, fitted)]
    assert detail[1] < 0.8 * detail[0]


def test_dataset_with_devices_lists_them_and_keeps_the_annotations(tmp_path):
    plain = generate_dataset(tmp_path / "plain", n=12, seed=2, rows=96, cols=96, n_test=2, positive_share=0.5)
    fitted = generate_dataset(
        tmp_path / "fitted", n=12, seed=2, rows=96, cols=96, n_test=2, positive_share=0.5, devices=DeviceOptions()
    )
    assert [case.annotations for case in plain] == [case.annotations for case in fitted]
    assert not (tmp_path / "plain" / DEVICES_CSV_NAME).exists()
    with open(tmp_path / "fitted" / DEVICES_CSV_NAME, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["ImageId", "split", *DEVICE_COLUMNS]
    assert [row["split"] for row in rows] == ["dicom-images-train"] * 12 + ["dicom-images-test"] * 2
    assert [row["ImageId"] for row in rows[:12]] == [case.image_id for case in fitted]
    assert [row["drain"] == "1" for row in rows[:12]] == [bool(case.devices.drain_side) for case in fitted]
    items, report = build_datalist(tmp_path / "fitted", n_folds=3)
    assert len(items) == 12 and report.lines() == []


def test_command_line_devices_options(tmp_path, capsys):
    args = ["--out", str(tmp_path / "a"), "--n", "6", "--size", "64", "--workers", "1", "--positive_share", "1"]
    assert main([*args, "--devices", "--drain_positive", "1"]) == 0
    assert "6 training images with a chest drain (6 of the 6 positive)" in capsys.readouterr().out
    for bad, message in (
        (["--drain_positive", "0.3"], "--drain_positive needs --devices"),
        (["--devices", "--drain_negative", "1.5"], "drain_negative must be a probability"),
    ):
        with pytest.raises(SystemExit):
            main([*args, *bad])
        assert message in capsys.readouterr().err
