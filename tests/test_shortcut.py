"""The shortcut experiment's report (scripts.synthetic.shortcut) and the held-out evaluation it reads."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from scripts.evaluation.triplet import tuned_triplet
from scripts.siim.datalist import load_heldout
from scripts.synthetic.dataset import generate_dataset
from scripts.synthetic.devices import DeviceOptions
from scripts.synthetic.shortcut import GROUPS, auc, drain_band, heat_on_band, main, subgroups
from scripts.utils.files import write_csv
from tests.helpers import BrightnessNet


def test_auc_counts_pairs_ranked_right_and_ties_as_half():
    assert auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auc([0.1], [0.9]) == 0.0
    assert auc([0.5, 0.9], [0.5, 0.1]) == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert np.isnan(auc([], [0.3]))


def test_subgroups_found_means_some_overlap_and_clean_means_nothing_predicted():
    dice = {"a": 0.0, "b": 0.7, "c": 1.0, "d": 0.0, "e": 1.0}
    positive = {"a": True, "b": True, "c": False, "d": False, "e": False}
    drain = {"a": True, "b": True, "c": True, "d": True, "e": False}
    rates, counts = subgroups(dice, positive, drain)
    assert counts == {GROUPS[True, True]: 2, GROUPS[True, False]: 0, GROUPS[False, True]: 2, GROUPS[False, False]: 1}
    assert rates[GROUPS[True, True]] == 0.5 and rates[GROUPS[False, True]] == 0.5 and rates[GROUPS[False, False]] == 1.0
    assert np.isnan(rates[GROUPS[True, False]])


def test_the_drain_band_follows_the_path_and_heat_on_it_is_relative_to_the_average_pixel():
    band = drain_band(np.array([[2.0, 2.0], [2.0, 17.0], [17.0, 17.0]]), (20, 20), half_width=1.0)
    assert band[2, 2:18].all() and band[2:18, 17].all() and band[1, 10] and not band[4, 10] and not band[10, 10]
    heat = np.zeros((20, 20))
    heat[band] = 1.0
    assert heat_on_band(heat, band) == pytest.approx(1 / band.mean())  # all the heat on the band
    assert heat_on_band(np.ones((20, 20)), band) == pytest.approx(1.0)  # no hotter than anywhere else
    assert np.isnan(heat_on_band(np.zeros((20, 20)), band))


def test_a_held_out_set_is_all_validation_and_needs_the_models_own_thresholds(tmp_path):
    generate_dataset(tmp_path / "siim", n=6, seed=1, rows=64, cols=64)
    fold = load_heldout(tmp_path / "siim")
    assert fold["training"] == [] and len(fold["validation"]) == 6
    with pytest.raises(FileNotFoundError, match="no tuned thresholds; evaluate the model on its own fold first"):
        tuned_triplet(tmp_path / "thresholds.json")
    (tmp_path / "thresholds.json").write_text(json.dumps({"top": 0.9, "min_area": 10, "bottom": 0.4, "gate": 0.3}))
    assert tuned_triplet(tmp_path / "thresholds.json") == {"top": 0.9, "min_area": 10, "bottom": 0.4, "min_component": 0}


def _fake_run(root, name, ids, dice, probability):
    """What make shortcut leaves for one model, with the given per-image Dice and probabilities."""
    test = root / "runs" / name / "test"
    test.mkdir(parents=True)
    (test / "metrics.json").write_text(json.dumps({"metrics": {"val_competition_dice": 0.8, "val_tuned_competition_dice": 0.85}}))
    write_csv(test / "val_competition_dice_raw.csv", ["filename", "class0", "mean"],
              [[f"/x/{i}.dcm", f"{dice[i]:.4f}", f"{dice[i]:.4f}"] for i in ids])  # fmt: skip
    write_csv(root / "runs" / name / "test_inference" / "predictions.csv", ["ImageId", "probability", "area_px", "positive"],
              [[i, f"{probability[i]:.6f}", "0", "no"] for i in ids])  # fmt: skip
    models = root / "models" / name
    models.mkdir(parents=True)
    torch.save(BrightnessNet().state_dict(), models / "model.pt")
    (models / "model.json").write_text(json.dumps({"network": {"target": "tests.helpers.BrightnessNet"}}))


def test_the_report_of_a_model_that_learned_the_drain(tmp_path, capsys):
    options = DeviceOptions(drain_positive=0.5, drain_negative=0.5)
    generate_dataset(tmp_path / "test" / "siim", n=16, seed=3, rows=64, cols=64, positive_share=0.5, devices=options)
    with open(tmp_path / "test" / "siim" / "devices.csv", newline="") as handle:
        drain = {row["ImageId"]: row["drain"] == "1" for row in csv.DictReader(handle)}
    with open(tmp_path / "test" / "siim" / "train-rle.csv", newline="") as handle:
        positive = {row["ImageId"]: row[" EncodedPixels"].strip() != "-1" for row in csv.DictReader(handle)}
    ids = sorted(positive)
    assert {(positive[i], drain[i]) for i in ids} == set(GROUPS), "the fixture needs every subgroup"
    # a drain detector: it predicts a pneumothorax exactly where there is a drain
    _fake_run(tmp_path, "shortcut", ids, {i: float(drain[i]) if positive[i] else float(not drain[i]) for i in ids},
              {i: 0.9 if drain[i] else 0.1 for i in ids})  # fmt: skip
    assert main(["--dir", str(tmp_path), "--models", "shortcut", "--figure", str(tmp_path / "figure.png")]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("| shortcut"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:3] == ["0.8000", "0.8500"]
    assert cells[3:7] == ["1.00", "0.00", "0.00", "1.00"]  # found only with a drain, clean only without one
    assert cells[8] == "0.000"  # every normal with a drain outranks every pneumothorax without one
    assert float(cells[9]) > 0 and cells[10] == ""  # a mask heatmap, no gate
    assert (tmp_path / "shortcut.md").read_text().startswith("| model |")
    normals_with_drain = sum(drain[i] and not positive[i] for i in ids)
    with Image.open(tmp_path / "figure.png") as figure:
        assert figure.width == min(4, normals_with_drain) * (64 + 4) - 4 and figure.height > 64


def test_the_report_names_what_is_missing(tmp_path):
    generate_dataset(tmp_path / "test" / "siim", n=4, seed=3, rows=64, cols=64, devices=DeviceOptions())
    with pytest.raises(ValueError, match="val_competition_dice_raw.csv: cannot read it"):
        main(["--dir", str(tmp_path), "--models", "absent"])
