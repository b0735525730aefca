"""Specification of the demo's closing report (scripts/evaluation/report.py)."""

import json

import pytest

from scripts.evaluation.report import all_empty_score, main


def test_all_empty_score_is_the_share_of_negative_images():
    assert all_empty_score([{"positive": True}, {"positive": False}, {"positive": False}, {"positive": False}]) == 0.75


def test_report_names_the_outputs_and_compares_with_the_baseline(tmp_path, capsys):
    (tmp_path / "runs" / "eval").mkdir(parents=True)
    metrics = {
        "val_competition_dice": 0.8,
        "val_tuned_competition_dice": 0.82,
        "val_pixel_dice": 0.4,
        "val_sensitivity": 0.7,
        "val_specificity": 0.9,
    }
    (tmp_path / "runs" / "eval" / "metrics.json").write_text(json.dumps({"images": 4, "metrics": metrics}))
    items = [{"image": f"{i}.dcm", "positive": i == 0, "fold": 0} for i in range(4)]
    items += [{"image": "4.dcm", "positive": True, "fold": 1}]
    (tmp_path / "datalist.json").write_text(json.dumps({"n_folds": 2, "seed": 0, "items": items}))
    (tmp_path / "runs" / "inference").mkdir()
    inference = {"input": "test-images", "processed": 20, "positive": 3, "errors": 1, "seconds_per_image": 0.2}
    (tmp_path / "runs" / "inference" / "summary.json").write_text(json.dumps(inference))
    assert main(["--demo_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4 images, 1 with pneumothorax" in out
    assert "predicting every image empty             0.7500" in out
    assert "configured thresholds  0.8000" in out and "model.pt" in out
    assert "20 images, 3 with a predicted pneumothorax, 1 errors" in out and "submission.csv" in out


def test_missing_evaluation_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--demo_dir", str(tmp_path)])
