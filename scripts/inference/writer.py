"""Everything inference writes into its output folder, as one MONAI/Ignite handler.

Per image, the files of ``scripts.inference.outputs`` (named by the image's ImageId made safe by
``scripts.utils.files.safe_name``), written by ``scripts.inference.writer_pool`` processes while the engine goes
on: the engine's thread only checks the prediction and packs it into bits.

Everything is written into a staging folder and replaces ``output_dir``'s contents as one when the run completes
(``scripts.inference.result_folder``): a non-empty ``output_dir`` is refused unless ``overwrite``, and a run that
fails leaves it as it was.

Once the run completes: ``submission.csv`` (``ImageId,EncodedPixels``, one row per image, ``-1`` when empty,
exactly the competition's submission format), ``predictions.csv`` and ``worklist.csv`` (each image's probability and
predicted area, in input order and by probability: ``scripts.inference.predictions``), ``errors.csv`` (file, reason) and ``summary.json`` (counts,
positives, time per image, the thresholds and checkpoints used). Every file is written atomically; an error on one
image is recorded and the next image goes on.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
from ignite.engine import Engine, Events

from scripts.data.labels import to_image_orientation
from scripts.inference.engine import ERROR_KEY, PATH_KEY, SKIP_KEY
from scripts.inference.gating import GATED_KEY, IMAGE_PROB_KEY
from scripts.inference.heatmaps import blend
from scripts.inference.inputs import DicomScan, scan_dicom_inputs
from scripts.inference.outputs import OUTPUT_FOLDERS, import_writers, write_image_files
from scripts.inference.predictions import ImagePrediction, write_predictions
from scripts.inference.result_folder import ResultFolder
from scripts.inference.writer_pool import WriterPool
from scripts.siim import rle
from scripts.siim.image_id import dicom_image_id
from scripts.siim.rle_csv import write_rle_csv
from scripts.utils.errors import error_reason
from scripts.utils.files import atomic_open, safe_name, write_reasons_csv
from scripts.utils.flags import switches

__all__ = ["RESULT_NAMES", "InferenceWriter"]

#: What a run writes into its output folder, and all that ``--overwrite true`` will replace.
RESULT_NAMES = (
    "submission.csv", "predictions.csv", "worklist.csv", "errors.csv", "skipped.csv", "summary.json", *OUTPUT_FOLDERS,
)  # fmt: skip

logger = logging.getLogger(__name__)


class InferenceWriter:
    """Write masks, DICOM SEGs, overlays, the submission CSV, errors and a summary for a folder inference run.

    Args:
        output_dir: where everything goes (created; refused if it holds anything, unless ``overwrite``).
        scan: the :class:`~scripts.inference.inputs.DicomScan` the dataset was built from (for the skipped count),
            or the input path to scan again.
        masks, seg, overlays: which per-image outputs to write.
        heatmaps: a :class:`~scripts.inference.heatmaps.HeatmapMaker` to write ``heatmaps/`` with, or None.
        pred_key, image_key: engine output keys of the thresholded prediction and of the loaded image.
        info: extra facts for ``summary.json`` (thresholds, checkpoints, TTA...); a callable is asked when the
            summary is written (what only the run can tell: which runtime each network ended up on).
        workers: processes that write the per-image files in parallel with inference (0: the engine's thread).
        overwrite: replace the results ``output_dir`` holds (as one, when the run completes).
    """

    @switches(masks="write_masks", seg="write_seg", overlays="write_overlays", overwrite="overwrite")
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
        workers: int = 0,
        overwrite: bool = False,
        heatmaps=None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.scan = scan if isinstance(scan, DicomScan) or scan is None else scan_dicom_inputs(scan)
        inputs = [self.scan.root] if self.scan is not None and self.scan.root is not None else []
        self.result = ResultFolder(self.output_dir, overwrite=overwrite, result_names=RESULT_NAMES, inputs=inputs)
        self.result.check()  # before any image is processed
        if self.scan is not None and self.scan.hidden_folders:
            logger.warning("hidden folders not searched for DICOM files: %s", ", ".join(map(str, self.scan.hidden_folders)))
        self.workdir: Path | None = None
        self.masks, self.seg, self.overlays, self.heatmaps = masks, seg, overlays, heatmaps
        self.pred_key, self.image_key = pred_key, image_key
        self.info = dict(info or {})
        self.pool = WriterPool(write_image_files, workers=workers)
        self._reset()

    def _reset(self) -> None:
        self.rows: list[tuple[str, str]] = []
        self.predictions: list[ImagePrediction] = []
        self.gated = 0
        self.errors: list[tuple[str, str]] = []
        self.skipped: list[tuple[str, str]] = []
        self.failed_inputs = 0
        self.seen: dict[str, str] = {}
        self.seconds: list[float] = []
        self._started = self._iteration_started = time.perf_counter()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_STARTED, self._start_iteration)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, lambda _: self.finish())
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._abort)

    def _abort(self, _: Engine, error: BaseException) -> None:
        """The run failed: stop the writers and let the error through (Ignite re-raises only without handlers)."""
        self.pool.close(cancel=True)
        self.result.discard()
        self._restore_sigterm()
        raise error

    def _start(self, _: Engine) -> None:
        self._reset()
        self._catch_sigterm()
        self.start_run()

    def _catch_sigterm(self) -> None:
        """SIGTERM (``kill``, a scheduler's timeout) ends the run as cleanly as Ctrl-C: writers stopped, staging
        removed, ``output_dir`` as it was, exit code 143."""
        self._previous_sigterm = None
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _terminate)

    def _restore_sigterm(self) -> None:
        if getattr(self, "_previous_sigterm", None) is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def start_run(self) -> None:
        """A fresh staging folder, and the writer processes (before the data loader starts its own), which inherit
        the writers' modules already imported."""
        self.workdir = self.result.open()
        self.pool.temp_folders = [self.workdir / folder for folder in OUTPUT_FOLDERS]
        import_writers(seg=self.seg)
        self.pool.start()

    def _start_iteration(self, _: Engine) -> None:
        self._iteration_started = time.perf_counter()

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, dict) and SKIP_KEY in output:
            self.skipped.extend((str(path), str(reason)) for path, reason in zip(output[PATH_KEY], output[SKIP_KEY]))
            return
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
                self._lose_image(path, error_reason(error, path))
        self.seconds.append(time.perf_counter() - self._iteration_started)

    def write_item(self, item: dict) -> None:
        """Check one image's prediction and hand its files to the writers; its row is kept in input order.

        A failure before the mask PNG is written loses the image (an error, no row); a failing SEG or overlay is
        recorded as an error of its own and the image keeps its row and mask.
        """
        image = item[self.image_key]
        meta = image.meta
        path = str(meta.get("filename_or_obj", ""))
        image_id = dicom_image_id(path, header=meta)
        if self.workdir is None:
            self.start_run()
        if image_id in self.seen:
            raise ValueError(f"SOPInstanceUID {image_id} already came from {self.seen[image_id]}; not written twice")
        # MONAI-loaded arrays are (cols, rows); outputs are in image orientation (rows, cols)
        mask = to_image_orientation(item[self.pred_key] > 0.5)
        rows, cols = int(meta.get("Rows", mask.shape[0])), int(meta.get("Columns", mask.shape[1]))
        if mask.shape != (rows, cols):
            raise ValueError(f"prediction shape {mask.shape} differs from the DICOM's (Rows, Columns) {(rows, cols)}")
        probability = _probability(item, path)
        self.seen[image_id] = path
        self.gated += bool(item.get(GATED_KEY, False))
        overlay = None
        if self.overlays:
            overlay = np.round(np.clip(to_image_orientation(image), 0.0, 1.0) * 255).astype(np.uint8)
        heatmap = None
        if self.heatmaps is not None:  # one forward and backward pass, here: the network is on this thread's device
            heatmap = blend(to_image_orientation(image.detach().cpu()), to_image_orientation(self.heatmaps(image)))
        job = (
            str(self.workdir), safe_name(image_id), path, np.packbits(mask.T), mask.shape,
            self.masks, self.seg, overlay, probability, heatmap,
        )  # fmt: skip
        self._record(self.pool.submit((image_id, path, probability, int(mask.sum())), job))

    def _record(self, finished) -> None:
        """Turn finished writes into rows and errors, in input order."""
        for (image_id, path, probability, area), (encoded, problems) in finished:
            if encoded is None:  # the mask itself was not written: ``problems`` is the reason
                self._lose_image(path, problems)
                continue
            self.rows.append((image_id, encoded))
            self.predictions.append(ImagePrediction(image_id, probability, area))
            for reason in problems:
                logger.warning("%s: %s", path, reason)
                self.errors.append((path, reason))

    def _lose_image(self, path: str, reason: str) -> None:
        """An image whose results could not be written: an error and no row."""
        logger.warning("cannot write the results of %s: %s", path, reason)
        self.errors.append((path, reason))
        self.failed_inputs += 1

    def finish(self) -> dict:
        """Wait for the writers, then write ``submission.csv``, ``errors.csv`` and ``summary.json``; return the
        summary."""
        if self.workdir is None:
            self.start_run()
        self._record(self.pool.drain())
        self.pool.close()
        write_rle_csv(self.workdir / "submission.csv", self.rows, style="stage2")
        write_predictions(self.workdir, self.predictions)
        write_reasons_csv(self.workdir / "errors.csv", self.errors)
        write_reasons_csv(self.workdir / "skipped.csv", self.skipped)
        elapsed = time.perf_counter() - self._started
        processed = len(self.rows)
        positives = sum(encoded != rle.EMPTY for _, encoded in self.rows)
        summary = {
            "dicom_files": processed + self.failed_inputs + len(self.skipped),
            "processed": processed,
            "positive": positives,
            "empty": processed - positives,
            "failed": self.failed_inputs,
            "errors": len(self.errors),
            "skipped_by_rules": len(self.skipped),
            "skipped_non_dicom": len(self.scan.skipped) if self.scan is not None else None,
            "hidden_folders_not_searched": [str(folder) for folder in self.scan.hidden_folders] if self.scan else [],
            "seconds_total": round(elapsed, 3),
            "seconds_per_image": round(float(np.mean(self.seconds)), 4) if self.seconds else None,
            "images_per_second": round(processed / elapsed, 3) if elapsed > 0 else None,
            "probability": _probability_source(self.gated, self.predictions),
            "outputs": {
                "submission": "submission.csv",
                "predictions": "predictions.csv",
                "worklist": "worklist.csv",
                "errors": "errors.csv",
                "skipped": "skipped.csv",
                "masks": "masks/" if self.masks else None,
                "seg": "seg/" if self.seg else None,
                "overlays": "overlays/" if self.overlays else None,
                "heatmaps": f"heatmaps/ (Grad-CAM at {self.heatmaps.layer})" if self.heatmaps is not None else None,
            },
            **{key: _asked(value) for key, value in self.info.items()},
        }
        with atomic_open(self.workdir / "summary.json", "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=4, default=str)
        self.result.publish()
        self.workdir = None
        self._restore_sigterm()
        logger.info(
            "%d images: %d positive, %d errors, %s non-DICOM files skipped; results in %s",
            processed,
            positives,
            len(self.errors),
            summary["skipped_non_dicom"],
            self.output_dir,
        )
        return summary


def _probability(item: dict, path: str) -> float | None:
    """The image's probability as the post-processing gave it (``scripts.inference.gating.ImageGated``), or None
    from a post-processing without that step (``predictions.csv`` then leaves it blank).

    Raises:
        ValueError: not a number in [0, 1], naming the image.
    """
    if item.get(IMAGE_PROB_KEY) is None:
        return None
    probability = float(item[IMAGE_PROB_KEY])
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"{path}: image probability {probability} is not in [0, 1]")
    return probability


def _probability_source(gated: int, predictions: list[ImagePrediction]) -> str:
    """What ``predictions.csv``'s probability column holds, for ``summary.json``."""
    if predictions and all(p.probability is None for p in predictions):
        return "none (the post-processing gave no image probability)"
    return "the image gate's" if gated else "the mask's largest pixel probability (no image gate)"


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _asked(value: object) -> object:
    """An info value for ``summary.json``: a callable's answer (its error, if it fails: the run's results matter
    more than one fact about it), else the value."""
    if not callable(value):
        return value
    try:
        return value()
    except Exception as error:
        return f"unknown ({error_reason(error)})"
