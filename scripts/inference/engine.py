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
import shutil
import signal
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

from monai.data import Dataset
from monai.engines import SupervisedEvaluator

from scripts.inference.selection import NotSelected
from scripts.utils.errors import error_reason, innermost
from scripts.utils.processes import forking_safely

__all__ = ["ERROR_KEY", "PATH_KEY", "SKIP_KEY", "FolderEvaluator", "LoaderWorkerDied", "SafeDataset"]

ERROR_KEY = "error"
SKIP_KEY = "skipped"
PATH_KEY = "image_path"
logger = logging.getLogger(__name__)


class SafeDataset(Dataset):
    """A MONAI ``Dataset`` whose items that fail in ``transform`` become ``{"error": reason, "image_path": path}``,
    and whose items the input rules leave out (``scripts.inference.selection``) ``{"skipped": reason, ...}``.

    Use it with ``batch_size=1`` (full-resolution radiographs differ in size anyway) and :class:`FolderEvaluator`.
    Each process notes the file it is loading (one small file per process in a temporary folder), so that
    :meth:`held_by` can say which file a dead loader worker held.
    """

    def __init__(self, data: Sequence[dict], transform: Callable | None = None, image_key: str = "image") -> None:
        super().__init__(data=data, transform=transform)
        self.image_key = image_key
        _remove_stale_notes()
        self.notes = Path(tempfile.mkdtemp(prefix=f"{_NOTES_PREFIX}{os.getpid()}-"))
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
            cause = innermost(error)
            if isinstance(cause, NotSelected):
                logger.info("skipped %s: %s", path, cause)
                return {SKIP_KEY: str(cause), PATH_KEY: path}
            reason = error_reason(error, path)
            logger.warning("cannot load %s: %s", path, reason)
            return {ERROR_KEY: reason, PATH_KEY: path}


class FolderEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` that skips the network for :class:`SafeDataset` error records.

    An error batch becomes the engine output as it is (``{"error": [...], "image_path": [...]}``), without
    post-processing, for the handlers (``scripts.inference.writer.InferenceWriter``) to report.
    """

    def run(self, global_epoch: int = 1) -> None:
        """Run over the folder; the writer and loader processes it forks never free what this process holds (the
        runtimes of an earlier run in the same process: the viewer, the DICOMweb command, MONAI Label), and the
        loader's processes end with the run."""
        try:
            with forking_safely():
                super().run(global_epoch)
        except (RuntimeError, OSError, EOFError) as error:
            # A dead worker shows as PyTorch's "DataLoader worker ... exited unexpectedly", or, when it dies while
            # handing over a tensor, as a reset connection: ask the loader which of its workers are gone.
            dataset = getattr(self.data_loader, "dataset", None)
            dead: list[tuple[int, int]] = []
            for _ in range(3):  # PyTorch's SIGCHLD handler may raise the same death again while we look
                try:
                    dead = self._stop_loader_workers()
                    break
                except RuntimeError:
                    continue
            if not dead or not isinstance(dataset, SafeDataset):
                raise
            held = [f"{dataset.held_by(pid) or 'an unknown file'} (pid {pid}, {_exit_reason(code)})" for pid, code in dead]
            raise LoaderWorkerDied(
                f"a data loader worker died while loading {', '.join(held)} (out of memory? a crash in a decoder? "
                "the other files are fine: leave that one out, or lower num_workers)"
            ) from error
        finally:  # whatever ended the run (a service goes on to the next one)
            self._end_loader_workers()

    def _setup_dataloader_iter(self) -> None:
        super()._setup_dataloader_iter()
        self._loader_iterator = self._dataloader_iter  # Ignite forgets it on an error; the error needs it

    def _end_loader_workers(self) -> None:
        """End the loader's processes now. Ignite stops after the folder's last image without asking the loader
        for more, so its iterator and idle workers would otherwise live on until the garbage collector finds them,
        where PyTorch's clean-up of an iterator it did not end waits 5 s per worker (10 s on 2 cores, at a random
        moment of the next run of a service or benchmark that runs inference again). Persistent workers
        (``persistent_workers``) are left to the loader, which reuses them."""
        if getattr(self.data_loader, "persistent_workers", False):
            return  # asked to live on: the loader's next iteration uses them again
        iterator, self._loader_iterator, self._dataloader_iter = getattr(self, "_loader_iterator", None), None, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def _stop_loader_workers(self) -> list[tuple[int, int]]:
        """``(pid, exit code)`` of the loader's workers that have died; then end the others and unregister them from
        PyTorch's SIGCHLD handler, which would otherwise raise the same death again at any later moment."""
        iterator = getattr(self, "_loader_iterator", None)
        workers = list(getattr(iterator, "_workers", []))
        deadline = time.monotonic() + 2.0  # a reset connection can arrive before the dead worker is reaped
        while True:
            dead = [(worker.pid, worker.exitcode) for worker in workers if worker.exitcode is not None]
            if dead or not workers or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._loader_iterator = None
        return dead

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict) -> dict:
        if isinstance(batchdata, dict) and (ERROR_KEY in batchdata or SKIP_KEY in batchdata):
            engine.state.output = {key: batchdata[key] for key in (ERROR_KEY, SKIP_KEY, PATH_KEY) if key in batchdata}
            return engine.state.output
        return super()._iteration(engine, batchdata)


class LoaderWorkerDied(RuntimeError):
    """A data loader worker process ended without an error of its own; the message names the file it held."""


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


_NOTES_PREFIX = "siim-loading-"


def _remove_notes(folder: Path, owner: int) -> None:
    if os.getpid() == owner:  # not from a forked loader worker
        shutil.rmtree(folder, ignore_errors=True)


def _remove_stale_notes() -> None:
    """Remove the notes folders of runs that were killed (their process is gone)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_NOTES_PREFIX}*-*"):
        owner = folder.name[len(_NOTES_PREFIX) :].split("-", 1)[0]
        if not owner.isdigit():
            continue
        try:
            os.kill(int(owner), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # alive, another user's
            pass

