"""Specification of triplet thresholding and its grid search (scripts/evaluation/triplet.py, threshold_search.py)."""

import json

import numpy as np
import pytest
import torch

from scripts.evaluation.threshold_search import TripletSearchHandler, TripletSearchMetric
from scripts.evaluation.triplet import Triplet, TripletThreshold, TripletThresholdd, load_triplet, save_triplet
from tests.conftest import REPO

SIDE = 1024  # areas are given at 1024 x 1024


def prob_map(side=SIDE):
    prob = torch.zeros(1, side, side)
    prob[0, :50, :50] = 0.9  # 2,500 confident pixels
    prob[0, 50:60, :50] = 0.35  # 500 more above a bottom of 0.3
    return prob


def test_too_few_confident_pixels_give_an_empty_mask():
    out = TripletThreshold(top=0.75, min_area=3000, bottom=0.3)(prob_map())
    assert out.sum() == 0 and out.shape == (1, SIDE, SIDE)


def test_enough_confident_pixels_give_the_mask_above_bottom():
    out = TripletThreshold(top=0.75, min_area=2000, bottom=0.3)(prob_map())
    assert out.sum() == 3000
    out = TripletThreshold(top=0.75, min_area=2000, bottom=0.5)(prob_map())
    assert out.sum() == 2500


def test_min_area_scales_with_the_image_area():
    small = torch.nn.functional.interpolate(prob_map()[None], size=(512, 512), mode="nearest")[0]
    assert TripletThreshold(top=0.75, min_area=2000, bottom=0.3)(small).sum() == 750  # 2000 -> 500 needed, 625 there
    assert TripletThreshold(top=0.75, min_area=2600, bottom=0.3)(small).sum() == 0  # 650 needed


def test_small_components_are_dropped():
    prob = prob_map()
    prob[0, 500:505, 500:505] = 0.9  # a 25-pixel speck
    out = TripletThreshold(top=0.75, min_area=2000, bottom=0.3, min_component=100)(prob)
    assert out.sum() == 3000 and out[0, 502, 502] == 0


def test_numpy_input_gives_numpy_output():
    out = TripletThreshold(top=0.75, min_area=0, bottom=0.3)(prob_map().numpy())
    assert isinstance(out, np.ndarray) and out.sum() == 3000


def test_dictionary_wrapper():
    out = TripletThresholdd("pred", top=0.75, min_area=2000, bottom=0.3)({"pred": prob_map(), "other": 1})
    assert out["pred"].sum() == 3000 and out["other"] == 1


def test_invalid_triplets_are_refused():
    with pytest.raises(ValueError, match="thresholds"):
        Triplet(top=1.5, min_area=2000, bottom=0.3)
    with pytest.raises(ValueError, match="areas"):
        Triplet(top=0.75, min_area=-1, bottom=0.3)


def test_saved_triplet_loads_back_and_missing_file_gives_the_configured_one(tmp_path):
    configured = json.loads((REPO / "configs" / "common.json").read_text())["triplet"]
    assert configured == {"top": 0.75, "min_area": 2000, "bottom": 0.3, "min_component": 0}
    save_triplet(tmp_path / "t.json", Triplet(top=0.6, min_area=1000, bottom=0.4), competition_dice=0.8)
    assert load_triplet(tmp_path / "t.json", default=configured) == {"top": 0.6, "min_area": 1000, "bottom": 0.4, "min_component": 0}
    assert load_triplet(tmp_path / "none.json", default=configured) == {"top": 0.75, "min_area": 2000, "bottom": 0.3, "min_component": 0}


def test_corrupt_thresholds_file_is_a_clear_error(tmp_path):
    (tmp_path / "t.json").write_text("{not json")
    with pytest.raises(ValueError, match="t.json"):
        load_triplet(tmp_path / "t.json", default={"top": 0.75, "min_area": 2000, "bottom": 0.3})


def brute_force(prob, truth, triplet):
    pred = TripletThreshold(top=triplet.top, min_area=triplet.min_area, bottom=triplet.bottom)(prob) > 0.5
    truth = truth > 0.5
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (pred & truth).sum() / total)


def test_grid_search_scores_every_triple_exactly_as_thresholding_would():
    generator = torch.Generator().manual_seed(0)
    probs = [torch.rand(1, 64, 64, generator=generator) ** 3 for _ in range(5)]
    truths = [(p > 0.5).float() for p in probs[:3]] + [torch.zeros(1, 64, 64)] * 2
    search = TripletSearchMetric(tops=(0.5, 0.9), min_areas=(0, 1000, 60000), bottoms=(0.3, 0.6))
    search(y_pred=torch.stack(probs), y=torch.stack(truths))
    table = search.table()
    assert len(table) == 12
    for triplet, gate, value in table:
        assert gate == 0.0  # no gate in the probabilities, none searched
        expected = np.mean([brute_force(p, t, triplet) for p, t in zip(probs, truths)])
        assert value == pytest.approx(expected)
    assert table[0].score == max(row.score for row in table)


def test_search_handler_saves_the_best_triple(tmp_path):
    handler = TripletSearchHandler(tmp_path / "thresholds.json", tops=(0.5,), min_areas=(0,), bottoms=(0.3, 0.6))
    truth = (prob_map() > 0.5).float()
    handler.update((prob_map()[None], truth[None]))
    assert handler.compute() == pytest.approx(1.0)
    saved = json.loads((tmp_path / "thresholds.json").read_text())
    assert saved["bottom"] == 0.6 and saved["competition_dice"] == pytest.approx(1.0)
    assert "gate" not in saved  # no gate was tuned: inference keeps its own gate_threshold
