"""The shortcut experiment's report: did a model trained where chest drains go with pneumothorax learn the drain?

``make shortcut`` trains the demo model on two synthetic sets of the same chests and masks, one where drains go
with pneumothorax and one where they do not, and scores each on a test set where drains are independent of it.
This module reads what it made under ``--dir`` and reports, per model:

- the competition Dice on the test set with the model's own thresholds (and what a search on the test set reaches);
- by subgroup: the share of pneumothoraces found (Dice > 0) with and without a drain, and of normal films left
  clean (empty mask) with and without one;
- the AUC of the image probability (``predictions.csv``) for pneumothoraces *without* a drain against normal
  films *with* one: a model that learned the drain ranks those normals first (AUC well below the overall AUC);
- how hot the drain is in the heatmaps (Grad-CAM of the mask, and of the gate for a headed network) of the normal
  films with a drain: the share of the map's mass within a few pixels of the drain's centre line, divided by the
  share of the image that band covers (1: no hotter than the average pixel);

and writes a figure of those heatmaps for a few normal films with a drain, one row per model.

Layout read (``make shortcut``'s): ``test/siim`` (``train-rle.csv`` and ``devices.csv``), ``runs/<model>/test``
(``metrics.json``, ``thresholds.json``, ``val_competition_dice_raw.csv``), ``runs/<model>/test_inference/
predictions.csv`` and ``models/<model>``::

    python -m scripts.synthetic.shortcut --dir shortcut --models correlated independent --figure heatmaps.png
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scripts.inference.predictions import read_predictions

__all__ = ["GROUPS", "ModelReport", "auc", "drain_band", "heat_on_band", "report_model", "subgroups"]

#: (pneumothorax, drain) -> the subgroup's name in the report
GROUPS = {(True, True): "pneumothorax, drain", (True, False): "pneumothorax, no drain",
          (False, True): "normal, drain", (False, False): "normal, no drain"}  # fmt: skip
_FIGURE_COLUMNS = 4


@dataclass
class ModelReport:
    name: str
    dice: float  # competition Dice on the test set, own thresholds
    dice_tuned: float  # what the triplet search on the test set itself reaches
    rates: dict[str, float]  # per GROUPS name: share found (pneumothorax) or clean (normal)
    counts: dict[str, int]
    auc_overall: float
    auc_shortcut: float  # pneumothorax without a drain against normal with one
    mask_heat: float  # heat on the drain of normal films, relative to the average pixel
    gate_heat: float | None  # the same for a headed network's gate, None without one

    def row(self) -> list[str]:
        rate = [f"{self.rates[GROUPS[key]]:.2f}" for key in ((True, True), (True, False), (False, True), (False, False))]
        gate = "" if self.gate_heat is None else f"{self.gate_heat:.2f}"
        return [self.name, f"{self.dice:.4f}", f"{self.dice_tuned:.4f}", *rate, f"{self.auc_overall:.3f}",
                f"{self.auc_shortcut:.3f}", f"{self.mask_heat:.2f}", gate]  # fmt: skip


HEADER = ["model", "test Dice (own thresholds)", "tuned on test", "found: ptx + drain", "found: ptx, no drain",
          "clean: normal + drain", "clean: normal, no drain", "AUC", "AUC ptx w/o drain vs normal + drain",
          "mask heat on drain", "gate heat on drain"]  # fmt: skip


def subgroups(dice: dict[str, float], positive: dict[str, bool], drain: dict[str, bool]) -> tuple[dict, dict]:
    """``(rates, counts)`` per :data:`GROUPS` name: for pneumothorax groups the share of images with Dice > 0
    (found), for normal groups the share with Dice 1 (nothing predicted: the competition Dice of an empty truth)."""
    rates, counts = {}, {}
    for (is_positive, has_drain), name in GROUPS.items():
        scores = [dice[i] for i in dice if positive[i] == is_positive and drain[i] == has_drain]
        counts[name] = len(scores)
        hits = [s > 0 for s in scores] if is_positive else [s >= 1.0 for s in scores]
        rates[name] = float(np.mean(hits)) if hits else float("nan")
    return rates, counts


def auc(positive_scores, negative_scores) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random negative (ties half)."""
    pos, neg = np.asarray(positive_scores, float), np.asarray(negative_scores, float)
    if not len(pos) or not len(neg):
        return float("nan")
    above = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(above / (len(pos) * len(neg)))


def drain_band(path: np.ndarray, shape: tuple[int, int], half_width: float) -> np.ndarray:
    """Bool ``shape`` mask of the pixels within ``half_width`` of the polyline ``path`` (``(n, 2)`` row, col)."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    pixels = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(float)
    nearest = np.full(len(pixels), np.inf)
    for start, end in zip(path[:-1], path[1:]):
        step = end - start
        t = np.clip(((pixels - start) @ step) / max(float(step @ step), 1e-12), 0.0, 1.0)
        nearest = np.minimum(nearest, np.hypot(*(pixels - (start + t[:, None] * step)).T))
    return (nearest <= half_width).reshape(shape)


def heat_on_band(heat: np.ndarray, band: np.ndarray) -> float:
    """The share of ``heat``'s mass inside ``band`` over the share of the image ``band`` covers (1: the band is as
    hot as the average pixel; nan for an all-zero map or an empty band)."""
    total, area = float(heat.sum()), float(band.mean())
    if total <= 0 or area <= 0:
        return float("nan")
    return float(heat[band].sum()) / total / area


def _read_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except OSError as error:
        raise ValueError(f"{path}: cannot read it ({error}); has make shortcut finished?") from error


def _per_image_dice(path: Path) -> dict[str, float]:
    """The evaluator's per-image competition Dice (MetricsSaver's ``*_raw.csv``), by ImageId (the file's stem)."""
    return {Path(row["filename"]).stem: float(row["class0"]) for row in _read_csv(path)}


def report_model(directory: Path, name: str, positive: dict[str, bool], drain: dict[str, bool],
                 heat_for=None) -> ModelReport:  # fmt: skip
    """One model's :class:`ModelReport` from ``directory`` (``make shortcut``'s layout). ``heat_for(target)``
    gives the relative heat on the drain for ``"mask"`` or ``"gate"`` (None when the model has no image head)."""
    run = directory / "runs" / name
    dice = _per_image_dice(run / "test" / "val_competition_dice_raw.csv")
    missing = sorted(set(dice) - set(positive))
    if missing:
        raise ValueError(f"{run / 'test'}: {len(missing)} images not in the test set's CSV, e.g. {missing[0]}")
    metrics = json.loads((run / "test" / "metrics.json").read_text(encoding="utf-8"))["metrics"]
    probability = {p.image_id: p.probability for p in read_predictions(run / "test_inference" / "predictions.csv")}
    rates, counts = subgroups(dice, positive, drain)
    scored = [i for i in dice if probability.get(i) is not None]
    heat_for = heat_for or (lambda target: float("nan"))
    return ModelReport(
        name=name,
        dice=float(metrics["val_competition_dice"]),
        dice_tuned=float(metrics["val_tuned_competition_dice"]),
        rates=rates,
        counts=counts,
        auc_overall=auc([probability[i] for i in scored if positive[i]], [probability[i] for i in scored if not positive[i]]),
        auc_shortcut=auc([probability[i] for i in scored if positive[i] and not drain[i]],
                         [probability[i] for i in scored if not positive[i] and drain[i]]),  # fmt: skip
        mask_heat=heat_for("mask"),
        gate_heat=heat_for("gate"),
    )


def markdown(reports: list[ModelReport]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(report.row()) + " |" for report in reports]
    counts = reports[0].counts
    lines.append("")
    lines.append("Test images: " + ", ".join(f"{name} {counts[name]}" for name in GROUPS.values()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.synthetic.shortcut", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, help="what make shortcut made (SHORTCUT_DIR)")
    parser.add_argument("--models", nargs="+", required=True, help="model names under DIR/models")
    parser.add_argument("--figure", default=None, help="PNG of heatmaps on normal films with a drain")
    parser.add_argument("--band_px", type=float, default=None, help="half width of the drain's band (default 2%% of the width)")
    args = parser.parse_args(argv)

    from scripts.data.labels import to_image_orientation
    from scripts.inference.heatmaps import blend, maker_for_checkpoint
    from scripts.siim.rle_csv import read_rle_csv
    from scripts.synthetic.devices import parse_points
    from scripts.utils.files import atomic_open

    directory = Path(args.dir)
    test = directory / "test" / "siim"
    annotations = read_rle_csv(test / "train-rle.csv").annotations
    positive = {image_id: bool(rles) for image_id, rles in annotations.items()}
    devices = {row["ImageId"]: row for row in _read_csv(test / "devices.csv")}
    drain = {image_id: devices[image_id]["drain"] == "1" for image_id in positive}
    dicoms = {path.stem: path for path in (test / "dicom-images-train").rglob("*.dcm")}
    normals = sorted(i for i in positive if not positive[i] and drain[i])

    reports, figure_rows = [], [("the films, drain in red", [])]
    for name in args.models:
        checkpoint = directory / "models" / name / "model.pt"
        cache: dict[str, list] = {}

        def heat_for(target: str, checkpoint=checkpoint, cache=cache) -> float | None:
            try:
                maker, load = maker_for_checkpoint(checkpoint, target=target)
            except ValueError:
                if target == "gate":
                    return None  # no image head
                raise
            ratios, pictures = [], []
            for image_id in normals:
                image = load({"image": str(dicoms[image_id])})["image"]
                heat = to_image_orientation(maker(image.as_tensor()))
                half = args.band_px or max(3.0, 0.02 * heat.shape[1])
                band = drain_band(parse_points(devices[image_id]["drain_path"]), heat.shape, half)
                ratios.append(heat_on_band(heat, band))
                if len(pictures) < _FIGURE_COLUMNS:
                    film = to_image_orientation(image[0].numpy())
                    pictures.append(blend(film, heat))
                    if len(figure_rows[0][1]) < _FIGURE_COLUMNS:
                        figure_rows[0][1].append(_marked(film, band))
            cache[target] = pictures
            return float(np.nanmean(ratios))

        report = report_model(directory, name, positive, drain, heat_for)
        reports.append(report)
        target = "gate" if report.gate_heat is not None else "mask"
        figure_rows.append((f"{name} ({target})", cache[target]))
        print(f"{name}: done", file=sys.stderr)

    table = markdown(reports)
    print(table)
    with atomic_open(directory / "shortcut.md") as handle:
        handle.write(table + "\n")
    if args.figure:
        _save_figure(Path(args.figure), figure_rows)
        print(f"{args.figure}: heatmaps of {len(figure_rows[0][1])} normal films with a drain, one row per model")
    return 0


def _marked(film: np.ndarray, band: np.ndarray) -> np.ndarray:
    """The grey film ([0, 1]) as RGB uint8 with ``band`` tinted red."""
    rgb = np.clip(film, 0, 1)[..., None].repeat(3, axis=2) * 255
    rgb[band] = 0.45 * rgb[band] + 0.55 * np.array([255.0, 0.0, 0.0])
    return np.round(rgb).astype(np.uint8)


def _save_figure(path: Path, rows: list[tuple[str, list[np.ndarray]]]) -> None:
    """The pictures in a grid, one row per model with its name above it."""
    from PIL import Image, ImageDraw, ImageFont

    from scripts.inference.outputs import save_png

    height, width = rows[0][1][0].shape[:2]
    label, gap = max(14, height // 14), 4
    columns = max(len(pictures) for _, pictures in rows)
    canvas = Image.new("RGB", (columns * (width + gap) - gap, len(rows) * (height + label + gap)), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=round(label * 0.75))
    for r, (title, pictures) in enumerate(rows):
        top = r * (height + label + gap)
        draw.text((2, top + 1), title, fill="black", font=font)
        for c, picture in enumerate(pictures):
            canvas.paste(Image.fromarray(picture), (c * (width + gap), top + label))
    save_png(path, np.asarray(canvas))


if __name__ == "__main__":
    sys.exit(main())
