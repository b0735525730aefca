"""Everything inference writes into its output folder, as one MONAI/Ignite handler.

Per image (named by its SOPInstanceUID, made safe by ``scripts.dicom_folder.safe_name``):

* ``masks/<uid>.png``: the mask, 0/255 uint8, the DICOM's rows x columns in image orientation;
* ``seg/<uid>.dcm``: a DICOM Segmentation referencing the source image (positive images only);
* ``overlays/<uid>.png`` (optional): the image with the mask outlined.

Once the run completes: ``submission.csv`` (``ImageId,EncodedPixels``, one row per image, ``-1`` when empty,
exactly the competition's submission format), ``errors.csv`` (file, reason) and ``summary.json`` (counts,
positives, time per image, the thresholds and checkpoints used). Every file is written atomically; an error on one
image is recorded and the next image goes on.

Writing one 1024 x 1024 image's files costs tens of milliseconds of CPU (PNG compression, RLE, and for a positive
image a DICOM SEG built by highdicom; ``scripts.benchmark`` measures it), several times what a GPU spends on the
image's sliding window. So the engine's thread only thresholds the prediction and packs it into bits, and
``workers`` processes (forked when the run starts) write the files while the GPU goes on with the next images.
``workers=0`` writes in the engine's thread.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pydicom
from ignite.engine import Engine, Events

from scripts import rle
from scripts.atomic import atomic_open
from scripts.dicom_folder import DicomScan, safe_name, scan_dicom_inputs
from scripts.flags import as_flag
from scripts.inference import ERROR_KEY, PATH_KEY, error_reason
from scripts.overlay import save_overlay
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
        workers: processes that write the per-image files in parallel with inference (0: the engine's thread).
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
        workers: int = 0,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.scan = scan if isinstance(scan, DicomScan) or scan is None else scan_dicom_inputs(scan)
        self.masks = as_flag(masks, "write_masks")
        self.seg = as_flag(seg, "write_seg")
        self.overlays = as_flag(overlays, "write_overlays")
        self.pred_key, self.image_key = pred_key, image_key
        self.info = dict(info or {})
        if int(workers) < 0:
            raise ValueError(f"InferenceWriter: workers must be >= 0, got {workers}")
        self.requested_workers = int(workers)
        self._pool: ProcessPoolExecutor | None = None
        self._reset()

    def _reset(self) -> None:
        self._close_pool()
        self.workers = self.requested_workers
        self._pending: deque[tuple[str, str, tuple, Future | tuple]] = deque()  # (id, path, job, result), input order
        self.rows: list[tuple[str, str]] = []
        self.errors: list[tuple[str, str]] = []
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
        self._close_pool(cancel=True)
        raise error

    def _start(self, _: Engine) -> None:
        self._reset()
        self._open_pool()  # before the data loader starts its workers and pinning thread

    def _open_pool(self) -> None:
        if self.workers and self._pool is None:
            context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
            self._pool.submit(int).result()  # starts the processes now, not while the engine runs

    def _close_pool(self, cancel: bool = False) -> None:
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None

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
                self._lose_image(path, error_reason(error))
        self.seconds.append(time.perf_counter() - self._iteration_started)

    def write_item(self, item: dict) -> None:
        """Check one image's prediction and hand its files to the writers; its row is kept in input order.

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
        mask = to_image_orientation(item[self.pred_key] > 0.5)
        rows, cols = int(meta.get("Rows", mask.shape[0])), int(meta.get("Columns", mask.shape[1]))
        if mask.shape != (rows, cols):
            raise ValueError(f"prediction shape {mask.shape} differs from the DICOM's (Rows, Columns) {(rows, cols)}")
        self.seen[image_id] = path
        overlay = None
        if self.overlays:
            overlay = np.round(np.clip(to_image_orientation(image), 0.0, 1.0) * 255).astype(np.uint8)
        job = (
            str(self.output_dir), safe_name(image_id), path, np.packbits(mask.T), mask.shape,
            self.masks, self.seg, overlay,
        )  # fmt: skip
        self._open_pool()
        result: Future | tuple | None = None
        if self._pool is not None:
            try:
                result = self._pool.submit(write_image_files, *job)
            except BrokenProcessPool:
                self._lose_pool()
        self._pending.append((image_id, path, job, result if result is not None else write_image_files(*job)))
        self._collect(keep=4 * self.workers)

    def _lose_pool(self) -> None:
        """A writer process died (killed, crashed): write the rest in this thread."""
        if self._pool is not None:
            logger.warning("a writer process died: the remaining files are written in the main process")
            self._pool.shutdown(wait=True, cancel_futures=True)  # the executor has ended its other processes
            self._pool, self.workers = None, 0
            for folder in ("masks", "seg", "overlays"):  # temporary files of writes cut short
                for stale in (self.output_dir / folder).glob(".*.tmp"):
                    stale.unlink(missing_ok=True)

    def _collect(self, keep: int = 0) -> None:
        """Turn finished writes into rows and errors, in input order, until at most ``keep`` are in flight (so a
        slow disk cannot fill memory); an image whose writer died is written again here."""
        while self._pending:
            image_id, path, job, result = self._pending[0]
            if isinstance(result, Future):
                if len(self._pending) <= keep and not result.done():
                    return
                try:
                    result = result.result()
                except BrokenProcessPool:
                    self._lose_pool()
                    result = write_image_files(*job)
            self._pending.popleft()
            encoded, problems = result
            if encoded is None:  # the mask itself was not written: ``problems`` is the reason
                self._lose_image(path, problems)
                continue
            self.rows.append((image_id, encoded))
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
        self._collect()
        self._close_pool()
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


def write_image_files(
    output_dir: str,
    name: str,
    source: str,
    packed: np.ndarray,
    shape: tuple[int, int],
    masks: bool,
    seg: bool,
    overlay: np.ndarray | None,
) -> tuple[str | None, object]:
    """Write one image's files (in a writer process): the mask PNG, the DICOM SEG of a positive image, the overlay.

    ``packed`` is ``np.packbits`` of the mask's transpose (MONAI's orientation, contiguous as the network wrote it),
    ``shape`` the mask's ``(rows, cols)`` in image orientation; ``overlay`` the uint8 image to
    outline it on, or None. Returns ``(rle, problems)``: the mask's RLE and the reasons of outputs that failed after
    the mask (the image keeps its row), or ``(None, reason)`` when the mask itself could not be written. Reasons are
    strings, so nothing that fails to unpickle crosses back from a writer process.
    """
    try:
        mask = np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape[::-1]).T.astype(bool)
        if masks:
            _save_png(Path(output_dir) / "masks" / f"{name}.png", mask.astype(np.uint8) * 255)
        encoded = rle.encode(mask)
    except Exception as error:
        return None, error_reason(error)
    problems = []
    if seg and mask.any():
        problems += _attempt("DICOM SEG", _write_seg, Path(output_dir) / "seg" / f"{name}.dcm", source, mask)
    if overlay is not None:
        problems += _attempt("overlay", save_overlay, Path(output_dir) / "overlays" / f"{name}.png", overlay, mask)
    return encoded, problems


def _attempt(what: str, function, *args) -> list[str]:
    try:
        function(*args)
    except Exception as error:
        return [f"{what} not written: {error_reason(error)}"]
    return []


def _write_seg(path: Path, source_path: str, mask: np.ndarray) -> None:
    from scripts.dicom_seg import write_segmentation

    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    write_segmentation(path, source, mask)


def _save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    with atomic_open(path, "wb") as handle:
        Image.fromarray(pixels.astype(np.uint8), mode="L").save(handle, format="PNG")
