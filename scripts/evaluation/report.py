"""What an evaluation run reports: ``metrics.json``, and the summary ``make demo`` prints.

* :func:`save_metrics_json`: the evaluator's metrics as JSON (``configs/evaluate.json`` writes ``metrics.json``);
* the command prints what ``make demo`` produced, where it went, and how the model compares with predicting every
  image empty::

    python -m scripts.evaluation.report --demo_dir demo
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from scripts.siim.datalist import read_datalist
from scripts.utils.files import write_json

__all__ = ["all_empty_score", "save_metrics_json"]


def save_metrics_json(path: str | os.PathLike, evaluator, thresholds_file: str | os.PathLike | None = None, **extra) -> dict:
    """Write an evaluator's metrics (and ``extra`` facts) as JSON, atomically; returns what was written.

    With ``thresholds_file`` (the search's, ``scripts.evaluation.threshold_search``) its best score without the image
    gate joins the metrics as ``val_tuned_competition_dice_without_gate``, and its gate threshold as
    ``tuned_gate``.
    """
    metrics = {name: float(value) for name, value in evaluator.state.metrics.items()}
    summary = {"images": len(evaluator.data_loader.dataset), "metrics": metrics}
    if thresholds_file is not None:
        summary["thresholds_file"] = str(thresholds_file)
        tuned = json.loads(Path(thresholds_file).read_text(encoding="utf-8")) if Path(thresholds_file).is_file() else {}
        if "competition_dice_without_gate" in tuned:
            metrics["val_tuned_competition_dice_without_gate"] = float(tuned["competition_dice_without_gate"])
            summary["tuned_gate"] = float(tuned.get("gate", 0.0))
    summary.update({key: str(value) for key, value in extra.items()})
    write_json(path, summary)
    return summary


def all_empty_score(datalist_items: list[dict]) -> float:
    """The competition score of predicting every image empty: the share of negative images."""
    return sum(not item["positive"] for item in datalist_items) / len(datalist_items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo_dir", default="demo")
    parser.add_argument("--fold", type=int, default=0)
    args = parser.parse_args(argv)
    demo = Path(args.demo_dir)
    summary = json.loads((demo / "runs" / "eval" / "metrics.json").read_text())
    datalist = read_datalist(demo / "datalist.json")
    items = datalist["items"]
    held_out = [item for item in items if item["fold"] == args.fold]
    metrics = summary["metrics"]
    baseline = all_empty_score(held_out)
    inference_dir = demo / "runs" / "inference"
    inference = json.loads((inference_dir / "summary.json").read_text())
    lines = [
        f"Demo data        {demo / 'siim'} ({len(items)} training images, {datalist['n_folds']} folds)",
        f"Datalist         {demo / 'datalist.json'}",
        f"Best model       {demo / 'models' / 'model.pt'} (thresholds: {demo / 'models' / 'thresholds.json'})",
        f"Training logs    {demo / 'runs' / 'train'} (TensorBoard, checkpoint.pt)",
        f"Evaluation       {demo / 'runs' / 'eval'} (metrics.json, per-image CSV)",
        "",
        f"Held-out fold {args.fold}: {len(held_out)} images, {sum(i['positive'] for i in held_out)} with pneumothorax",
        f"  competition Dice, configured thresholds  {metrics['val_competition_dice']:.4f}",
        f"  competition Dice, tuned thresholds       {metrics['val_tuned_competition_dice']:.4f} (tuned on this fold)",
        *(
            [f"  the same, without the image gate         {metrics['val_tuned_competition_dice_without_gate']:.4f} "
             f"(tuned gate threshold {summary.get('tuned_gate', 0):g})"]
            if summary.get("tuned_gate") else []
        ),
        f"  predicting every image empty             {baseline:.4f}",
        f"  pixel Dice {metrics['val_pixel_dice']:.4f}, sensitivity {metrics['val_sensitivity']:.4f}, "
        f"specificity {metrics['val_specificity']:.4f}",
        "",
        f"Inference        {inference_dir} on {inference['input']}",
        f"  {inference['processed']} images, {inference['positive']} with a predicted pneumothorax, "
        f"{inference['errors']} errors, {inference['seconds_per_image']} s per image",
        "  submission.csv (competition format), predictions.csv and worklist.csv (probability, area), masks/ (PNG),",
        "  seg/ (DICOM SEG), overlays/, summary.json, errors.csv",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
