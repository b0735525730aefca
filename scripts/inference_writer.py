"""Everything inference writes into its output folder, as one MONAI/Ignite handler.

Per image (named by its SOPInstanceUID, made safe by ``scripts.dicom_folder.safe_name``):

* ``masks/<uid>.png``: the mask, 0/255 uint8, the DICOM's rows x columns in image orientation;
* ``seg/<uid>.dcm``: a DICOM Segmentation referencing the source image (positive images only);
* ``overlays/<uid>.png`` (optional): the image with the mask outlined.

Once the run completes: ``submission.csv`` (``ImageId,EncodedPixels``, one row per image, ``-1`` when empty,
exactly the competition's submission format), ``errors.csv`` (file, reason) and ``summary.json`` (counts,
positives, time per image, the thresholds and checkpoints used). Every file is written atomically; an error on one
image is recorded and the next image goes on.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pydicom
import torch
from ignite.engine import Engine, Events

from scripts import rle
from scripts.atomic import atomic_open
from scripts.dicom_folder import DicomScan, safe_name, scan_dicom_inputs
from scripts.flags import as_flag
from scripts.inference import ERROR_KEY, PATH_KEY, error_reason
from scripts.siim_csv import write_rle_csv
from scripts.transforms import to_image_orientation

__all__ = ["InferenceWriter"]

logger = logging.getLogger(__name__)


class InferenceWriter:
    """Write masks, DICOM SEGs, overlays, the submission CSV, errors and a summary for a folder inference run.

    Args:
        output_dir: where everything goes (created).
        scan: the :class:`~scripts.dicom_folder.DicomScan` the dataset was built from (for the skipped count),
            or the input path to scan again.
        masks, seg, overlays: which per-image outputs to write.
        pred_key, image_key: engine output keys of the thresholded prediction and of the loaded image.
        info: extra facts for ``summary.json`` (thresholds, checkpoints, TTA...).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        scan: DicomScan | str | os.PathLike | None = None,
        masks: bool = True,
        seg: bool = True,
        overlays: bool = False,
        pred_key: str = "pred",
        image_key: str = "image",
        info: dict | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.scan = scan if isinstance(scan, DicomScan) or scan is None else scan_dicom_inputs(scan)
        self.masks = as_flag(masks, "write_masks")
        self.seg = as_flag(seg, "write_seg")
        self.overlays = as_flag(overlays, "write_overlays")
        self.pred_key, self.image_key = pred_key, image_key
        self.info = dict(info or {})
        self._reset()

    def _reset(self) -> None:
        self.rows: list[tuple[str, str]] = []
        self.errors: list[tuple[str, str]] = []
        self.failed_inputs = 0
        self.seen: dict[str, str] = {}
        self.seconds: list[float] = []
        self._started = self._iteration_started = time.perf_counter()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self._reset())
        engine.add_event_handler(Events.ITERATION_STARTED, self._start_iteration)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, lambda _: self.finish())

    def _start_iteration(self, _: Engine) -> None:
        self._iteration_started = time.perf_counter()

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, dict) and ERROR_KEY in output:
            for path, reason in zip(output[PATH_KEY], output[ERROR_KEY]):
                self.errors.append((str(path), str(reason)))
                self.failed_inputs += 1
            return
        for item in output if isinstance(output, list) else [output]:
            path = str(item[self.image_key].meta.get("filename_or_obj", "?"))
            try:
                self.write_item(item)
            except Exception as error:  # one image's failure must not cost the others
                reason = error_reason(error)
                logger.warning("cannot write the results of %s: %s", path, reason)
                self.errors.append((path, reason))
                self.failed_inputs += 1
        self.seconds.append(time.perf_counter() - self._iteration_started)

    def write_item(self, item: dict) -> None:
        """Write one image's outputs and remember its submission row.

        A failure before the mask PNG is written loses the image (an error, no row); a failing SEG or overlay is
        recorded as an error of its own and the image keeps its row and mask.
        """
        image = item[self.image_key]
        meta = image.meta
        path = str(meta.get("filename_or_obj", ""))
        image_id = str(meta.get("SOPInstanceUID") or Path(path).stem)
        if image_id in self.seen:
            raise ValueError(f"SOPInstanceUID {image_id} already came from {self.seen[image_id]}; not written twice")
        # MONAI-loaded arrays are (cols, rows); outputs are in image orientation (rows, cols)
        mask = to_image_orientation(item[self.pred_key]) > 0.5
        rows, cols = int(meta.get("Rows", mask.shape[0])), int(meta.get("Columns", mask.shape[1]))
        if mask.shape != (rows, cols):
            raise ValueError(f"prediction shape {mask.shape} differs from the DICOM's (Rows, Columns) {(rows, cols)}")
        name = safe_name(image_id)
        if self.masks:
            _save_png(self.output_dir / "masks" / f"{name}.png", mask.astype(np.uint8) * 255)
        self.seen[image_id] = path
        self.rows.append((image_id, rle.encode(mask)))
        if self.seg and mask.any():
            self._try(path, "DICOM SEG", self._write_seg, path, name, mask)
        if self.overlays:
            self._try(path, "overlay", _save_overlay, self.output_dir / "overlays" / f"{name}.png", image, mask)

    def _write_seg(self, path: str, name: str, mask: np.ndarray) -> None:
        from scripts.dicom_seg import write_segmentation

        source = pydicom.dcmread(path, stop_before_pixels=True)
        write_segmentation(self.output_dir / "seg" / f"{name}.dcm", source, mask)

    def _try(self, path: str, what: str, function, *args) -> None:
        try:
            function(*args)
        except Exception as error:
            reason = f"{what} not written: {error_reason(error)}"
            logger.warning("%s: %s", path, reason)
            self.errors.append((path, reason))

    def finish(self) -> dict:
        """Write ``submission.csv``, ``errors.csv`` and ``summary.json``; return the summary."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_rle_csv(self.output_dir / "submission.csv", self.rows, style="stage2")
        with atomic_open(self.output_dir / "errors.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["file", "reason"])
            writer.writerows(self.errors)
        elapsed = time.perf_counter() - self._started
        processed = len(self.rows)
        positives = sum(encoded != rle.EMPTY for _, encoded in self.rows)
        summary = {
            "dicom_files": processed + self.failed_inputs,
            "processed": processed,
            "positive": positives,
            "empty": processed - positives,
            "failed": self.failed_inputs,
            "errors": len(self.errors),
            "skipped_non_dicom": len(self.scan.skipped) if self.scan is not None else None,
            "seconds_total": round(elapsed, 3),
            "seconds_per_image": round(float(np.mean(self.seconds)), 4) if self.seconds else None,
            "images_per_second": round(processed / elapsed, 3) if elapsed > 0 else None,
            "outputs": {
                "submission": "submission.csv",
                "errors": "errors.csv",
                "masks": "masks/" if self.masks else None,
                "seg": "seg/" if self.seg else None,
                "overlays": "overlays/" if self.overlays else None,
            },
            **self.info,
        }
        with atomic_open(self.output_dir / "summary.json", "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=4, default=str)
        logger.info(
            "%d images: %d positive, %d errors, %s non-DICOM files skipped; results in %s",
            processed,
            positives,
            len(self.errors),
            summary["skipped_non_dicom"],
            self.output_dir,
        )
        return summary


def _save_overlay(path: Path, image: torch.Tensor | np.ndarray, mask: np.ndarray) -> None:
    from scripts.overlay import save_overlay

    save_overlay(path, to_image_orientation(image), mask)


def _save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    with atomic_open(path, "wb") as handle:
        Image.fromarray(pixels.astype(np.uint8), mode="L").save(handle, format="PNG")
