"""A run owns its output folder: results are written aside and replace the folder's contents as one.

An inference run holds a lock beside ``output_dir`` (``.<name>.lock``, ``fcntl.flock``: it ends with the process,
however it ends, and holds across containers that share the folder) for as long as it runs, so a second run into
the same folder is refused at once. It writes everything into a hidden staging folder beside ``output_dir``
(``.<name>.partial-<random>``) and, when it has finished, exchanges it with ``output_dir`` in one atomic step
(Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames). A reader of ``output_dir`` therefore sees the
previous run's complete result set or the new one, never a mix: no stale DICOM SEG or mask of an earlier run
survives beside the new ``submission.csv``. A run that fails leaves ``output_dir`` as it was (and does not create
it); the staging folders of killed runs are removed by the next run.

A folder that already holds anything is refused unless the run is told to replace it (``--overwrite true``), and
even then only a folder that holds nothing but an earlier run's results is replaced: never one that is, or holds,
the input or the current folder, nor one that holds anything else. An ``output_dir`` that is a link is followed
(the results replace the linked folder's); a mount point is refused (it cannot be replaced as a whole: use a
folder inside it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from scripts.utils.files import try_lock

__all__ = ["ResultFolder"]

_STAGING = "partial"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class ResultFolder:
    """Staging and publishing of one run's results in ``output_dir``.

    Args:
        output_dir: where the results end up.
        overwrite: replace an earlier result set in ``output_dir``; without it a non-empty folder is refused
            before the run.
        result_names: the names a result set is made of; with ``overwrite``, a folder holding anything else is
            refused.
        inputs: what the run reads; an ``output_dir`` that is, or holds, one of them is refused.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        overwrite: bool = False,
        result_names: Iterable[str] = (),
        inputs: Iterable[str | os.PathLike] = (),
    ) -> None:
        path = Path(output_dir).absolute()
        self.output_dir = path.resolve() if path.is_symlink() else path  # a link: its folder gets the results
        self.overwrite = overwrite
        self.result_names = frozenset(result_names)
        self.inputs = [Path(path).absolute() for path in inputs]
        self.staging: Path | None = None
        self._lock: int | None = None

    def check(self) -> None:
        """Refuse, in one line, an ``output_dir`` that is a file or a mount point, that is or holds the input or the
        current folder, that holds anything without ``overwrite``, or anything but results with it."""
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"output_dir {self.output_dir} is a file, not a folder")
        if self.output_dir.is_dir() and os.path.ismount(self.output_dir):
            raise ValueError(
                f"output_dir {self.output_dir} is a mount point, which a run cannot replace as a whole: use a folder "
                f"inside it ({self.output_dir / 'results'})"
            )
        real = self.output_dir.resolve()
        for path, what in [(path, "the input") for path in self.inputs] + [(Path.cwd(), "the current folder")]:
            if path.resolve() == real or real in path.resolve().parents:
                raise ValueError(
                    f"output_dir {self.output_dir} holds {what} ({path}): a run replaces its output folder, so "
                    "choose one outside it (a folder inside the input is fine)"
                )
        if not self.output_dir.is_dir():
            return
        held = sorted(entry.name for entry in self.output_dir.iterdir())
        if not held:
            return
        foreign = [name for name in held if name not in self.result_names] if self.result_names else []
        if self.overwrite and foreign:
            raise ValueError(
                f"output_dir {self.output_dir} holds what is not an inference result ({_shown(foreign)}): it is "
                "never replaced, even with --overwrite true; choose another folder"
            )
        if not self.overwrite:
            raise ValueError(
                f"output_dir {self.output_dir} is not empty ({_shown(held)}): pass --overwrite true to replace its "
                "results, or choose another folder"
            )

    def open(self) -> Path:
        """Take the run lock, check ``output_dir``, remove the staging folders of killed runs, create a fresh one.

        Raises:
            ValueError: another run holds the lock, or ``output_dir`` is refused (:meth:`check`).
        """
        self.discard()
        parent = self.output_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        self._lock = try_lock(parent / f".{self.output_dir.name}.lock")
        if self._lock is None:
            raise ValueError(
                f"output_dir {self.output_dir}: another inference run is writing into it; wait for it, or choose "
                "another folder"
            )
        try:
            self.check()
            for stale in parent.glob(glob.escape(f".{self.output_dir.name}.{_STAGING}-") + "*"):
                if stale.is_dir() and not stale.is_symlink():  # a dead run's: a live one would hold the lock
                    shutil.rmtree(stale, ignore_errors=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.output_dir.name}.{_STAGING}-", dir=parent))
        except BaseException:
            self._unlock()
            raise
        return self.staging

    def publish(self) -> Path:
        """Make the staging folder ``output_dir``, replacing what it held in one step.

        Raises:
            ValueError: ``output_dir`` has changed so that it is refused now (something else appeared in it); this
                run's results are kept in the staging folder, which the message names.
        """
        if self.staging is None:
            raise RuntimeError("ResultFolder.publish before open")
        staging, self.staging = self.staging, None
        try:
            try:
                self.check()  # the folder may have changed since the run began
            except ValueError as error:
                raise ValueError(f"{error}; this run's results are kept in {staging}") from None
            try:
                return self._swap_in(staging)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        finally:
            self._unlock()

    def _swap_in(self, staging: Path) -> Path:
        if self.output_dir.is_dir() and any(self.output_dir.iterdir()):
            if _exchange(staging, self.output_dir):
                shutil.rmtree(staging, ignore_errors=True)  # now the previous results
                return self.output_dir
            previous = Path(tempfile.mkdtemp(prefix=f".{self.output_dir.name}.replaced-", dir=staging.parent))
            os.replace(self.output_dir, previous)
            os.rename(staging, self.output_dir)
            shutil.rmtree(previous, ignore_errors=True)
            return self.output_dir
        if self.output_dir.is_dir():
            self.output_dir.rmdir()
        os.rename(staging, self.output_dir)
        return self.output_dir

    def discard(self) -> None:
        """Remove the staging folder of a run that failed, release the lock; ``output_dir`` keeps what it held."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # the lock file stays: removing it would let two runs lock two different files
            self._lock = None


def _shown(names: list[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically where the system can (Linux ``renameat2``); False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0
