"""Specification of the competition metric and its companions (scripts/evaluation/metrics.py)."""

import math

import pytest
import torch

from scripts.evaluation.metrics import PneumothoraxMetric, competition_dice, image_statistics


def batch(*masks):
    return torch.stack([torch.tensor(m, dtype=torch.float32)[None] for m in masks])


EMPTY = [[0, 0], [0, 0]]
HALF = [[1, 1], [0, 0]]
QUARTER = [[1, 0], [0, 0]]
FULL = [[1, 1], [1, 1]]


def score(name, predictions, truths):
    metric = PneumothoraxMetric(name)
    metric(y_pred=batch(*predictions), y=batch(*truths))
    return float(metric.aggregate())


def test_both_empty_scores_one():
    assert score("competition_dice", [EMPTY], [EMPTY]) == 1.0


def test_exactly_one_empty_scores_zero():
    assert score("competition_dice", [EMPTY], [HALF]) == 0.0
    assert score("competition_dice", [HALF], [EMPTY]) == 0.0


def test_overlap_scores_the_dice_coefficient():
    # |X∩Y| = 1, |X| = 2, |Y| = 1 -> 2/3
    assert score("competition_dice", [HALF], [QUARTER]) == pytest.approx(2 / 3)


def test_competition_score_is_the_mean_over_images():
    assert score("competition_dice", [EMPTY, HALF, EMPTY], [EMPTY, QUARTER, HALF]) == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_predicting_everything_empty_scores_the_negative_share():
    truths = [EMPTY] * 7 + [HALF] * 3
    assert score("competition_dice", [EMPTY] * 10, truths) == pytest.approx(0.7)


def test_pixel_dice_pools_all_pixels():
    # intersections 1 + 2 = 3, sizes (2 + 1) + (4 + 2) = 9 -> 6/9
    assert score("pixel_dice", [HALF, FULL], [QUARTER, HALF]) == pytest.approx(6 / 9)


def test_sensitivity_and_specificity_are_image_level():
    predictions = [QUARTER, EMPTY, HALF, EMPTY]
    truths = [FULL, HALF, EMPTY, EMPTY]
    assert score("sensitivity", predictions, truths) == pytest.approx(0.5)
    assert score("specificity", predictions, truths) == pytest.approx(0.5)


def test_sensitivity_without_positive_images_is_nan():
    assert math.isnan(score("sensitivity", [EMPTY], [EMPTY]))


def test_probabilities_are_binarised_at_one_half():
    stats = image_statistics(batch([[0.6, 0.4], [0, 0]]), batch(QUARTER))
    assert stats.tolist() == [[1, 1, 1]]


def test_buffer_holds_the_per_image_competition_dice():
    metric = PneumothoraxMetric("pixel_dice")
    metric(y_pred=batch(EMPTY, HALF), y=batch(EMPTY, QUARTER))
    assert metric.get_buffer().squeeze(1).tolist() == pytest.approx([1.0, 2 / 3])


def test_metric_accumulates_over_batches_and_lists():
    metric = PneumothoraxMetric("competition_dice")
    metric(y_pred=batch(EMPTY), y=batch(EMPTY))
    metric(y_pred=[torch.tensor(HALF, dtype=torch.float32)[None]], y=[torch.tensor(EMPTY, dtype=torch.float32)[None]])
    assert float(metric.aggregate()) == pytest.approx(0.5)


def test_competition_dice_from_statistics():
    stats = torch.tensor([[0, 0, 0], [0, 3, 0], [2, 2, 4]], dtype=torch.float64)
    assert competition_dice(stats).tolist() == pytest.approx([1.0, 0.0, 4 / 6])


def test_unknown_score_and_shape_mismatch_are_refused():
    with pytest.raises(ValueError, match="unknown score"):
        PneumothoraxMetric("iou")
    with pytest.raises(ValueError, match="shape"):
        image_statistics(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))
