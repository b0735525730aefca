"""The engine of ``configs/inference.json``: a dataset and an evaluator for which one bad file costs only itself.

* :class:`SafeDataset`: a file that cannot be loaded (corrupt, truncated, pixel-less, RGB) becomes an error record
  instead of stopping the run.
* :class:`FolderEvaluator`: a ``SupervisedEvaluator`` that passes error records straight to the handlers
  (``scripts.inference.writer.InferenceWriter`` lists them in ``errors.csv``), and that names the file a loader
  worker held when the worker died (killed for memory, a crash in a decoder's C code).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

from monai.data import Dataset
from monai.engines import SupervisedEvaluator

from scripts.utils.errors import error_reason

__all__ = ["ERROR_KEY", "PATH_KEY", "FolderEvaluator", "LoaderWorkerDied", "SafeDataset"]

ERROR_KEY = "error"
PATH_KEY = "image_path"
logger = logging.getLogger(__name__)


class SafeDataset(Dataset):
    """A MONAI ``Dataset`` whose items that fail in ``transform`` become ``{"error": reason, "image_path": path}``.

    Use it with ``batch_size=1`` (full-resolution radiographs differ in size anyway) and :class:`FolderEvaluator`.
    Each process notes the file it is loading (one small file per process in a temporary folder), so that
    :meth:`held_by` can say which file a dead loader worker held.
    """

    def __init__(self, data: Sequence[dict], transform: Callable | None = None, image_key: str = "image") -> None:
        super().__init__(data=data, transform=transform)
        self.image_key = image_key
        self.notes = Path(tempfile.mkdtemp(prefix="siim-loading-"))
        weakref.finalize(self, _remove_notes, self.notes, os.getpid())

    def held_by(self, pid: int) -> str | None:
        """The file process ``pid`` was loading last, if it noted one."""
        try:
            return (self.notes / str(pid)).read_text(encoding="utf-8", errors="replace") or None
        except OSError:
            return None

    def _transform(self, index: int):
        path = str(self.data[index].get(self.image_key, "?"))
        try:
            (self.notes / str(os.getpid())).write_text(path, encoding="utf-8", errors="surrogateescape")
        except OSError:  # the notes are for error messages only
            pass
        try:
            return super()._transform(index)
        except Exception as error:  # any failure of one file must not stop the others
            reason = error_reason(error)
            logger.warning("cannot load %s: %s", path, reason)
            return {ERROR_KEY: reason, PATH_KEY: path}


class FolderEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` that skips the network for :class:`SafeDataset` error records.

    An error batch becomes the engine output as it is (``{"error": [...], "image_path": [...]}``), without
    post-processing, for the handlers (``scripts.inference.writer.InferenceWriter``) to report.
    """

    def run(self, global_epoch: int = 1) -> None:
        try:
            super().run(global_epoch)
        except RuntimeError as error:
            died = _dead_worker_pids(str(error))
            dataset = getattr(self.data_loader, "dataset", None)
            if not died or not isinstance(dataset, SafeDataset):
                raise
            held = [f"{dataset.held_by(pid) or 'an unknown file'} (pid {pid})" for pid in died]
            raise LoaderWorkerDied(
                f"a data loader worker died while loading {', '.join(held)}: {str(error).splitlines()[0]} "
                "(out of memory? see errors.csv of a run without that file, or lower num_workers)"
            ) from error

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict) -> dict:
        if isinstance(batchdata, dict) and ERROR_KEY in batchdata:
            engine.state.output = {ERROR_KEY: batchdata[ERROR_KEY], PATH_KEY: batchdata[PATH_KEY]}
            return engine.state.output
        return super()._iteration(engine, batchdata)


class LoaderWorkerDied(RuntimeError):
    """A data loader worker process ended without an error of its own; the message names the file it held."""


def _dead_worker_pids(message: str) -> list[int]:
    """The pids in PyTorch's "DataLoader worker (pid(s) 12, 34) exited unexpectedly" / "... is killed by signal"."""
    match = re.search(r"DataLoader worker \(pids?(?:\(s\))? ([\d, ]+)\)", message)
    return [int(pid) for pid in re.findall(r"\d+", match.group(1))] if match else []


def _remove_notes(folder: Path, owner: int) -> None:
    if os.getpid() == owner:  # not from a forked loader worker
        shutil.rmtree(folder, ignore_errors=True)
