"""A run owns its output folder: results are written aside and replace the folder's contents as one.

An inference run writes everything into a hidden staging folder beside ``output_dir`` (``.<name>.partial-<random>``,
with a lock file beside it that the run holds while it lives) and, when it has finished, exchanges it with ``output_dir`` in one atomic step
(Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames). A reader of ``output_dir`` therefore sees the
previous run's complete result set or the new one, never a mix: no stale DICOM SEG or mask of an earlier run
survives beside the new ``submission.csv``. A run that fails leaves ``output_dir`` as it was (and does not create
it).

A folder that already holds anything is refused unless the run is told to replace it (``--overwrite true``), and
even then only a folder that holds nothing but an earlier run's results is replaced: never one that holds or
contains the input, or anything else. A second run into the same folder while one is writing is refused; the
staging folders of runs that were killed are removed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

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
        inputs: what the run reads; an ``output_dir`` that is, or contains, one of them is refused.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        overwrite: bool = False,
        result_names: Iterable[str] = (),
        inputs: Iterable[str | os.PathLike] = (),
    ) -> None:
        self.output_dir = Path(output_dir).absolute()
        self.overwrite = overwrite
        self.result_names = frozenset(result_names)
        self.inputs = [Path(path).absolute() for path in inputs]
        self.staging: Path | None = None
        self._lock: int | None = None

    def check(self) -> None:
        """Refuse, in one line, an ``output_dir`` that is a file, that holds or contains the input, that holds
        anything without ``overwrite``, or anything but results with it."""
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"output_dir {self.output_dir} is a file, not a folder")
        real = self.output_dir.resolve()
        for path in self.inputs:
            if path.resolve() == real or real in path.resolve().parents:
                raise ValueError(
                    f"output_dir {self.output_dir} holds the input {path}: a run replaces its output folder, so "
                    "choose one outside the input (a folder inside it is fine)"
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
        """Check ``output_dir`` and create a fresh, locked staging folder beside it; staging folders of dead runs
        are removed, and a live one (another run writing here) is refused."""
        self.check()
        self.discard()
        parent = self.output_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        for other in parent.glob(f".{self.output_dir.name}.{_STAGING}-*"):
            if not other.is_dir():
                continue
            lock = _try_lock(_lock_file(other))
            if lock is False:
                raise ValueError(
                    f"output_dir {self.output_dir}: another inference run is writing into it ({other.name}); "
                    "wait for it, or choose another folder"
                )
            shutil.rmtree(other, ignore_errors=True)  # a killed run's
            _lock_file(other).unlink(missing_ok=True)
            if lock is not None:
                os.close(lock)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.output_dir.name}.{_STAGING}-", dir=parent))
        self._lock = _try_lock(_lock_file(self.staging), create=True)
        return self.staging

    def publish(self) -> Path:
        """Make the staging folder ``output_dir``, replacing what it held in one step."""
        if self.staging is None:
            raise RuntimeError("ResultFolder.publish before open")
        self.check()  # the folder may have filled since the run began
        staging, self.staging = self.staging, None
        try:
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
        finally:
            self._unlock(staging)

    def discard(self) -> None:
        """Remove the staging folder of a run that failed; ``output_dir`` keeps what it held."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self._unlock(self.staging)
            self.staging = None

    def _unlock(self, staging: Path) -> None:
        _lock_file(staging).unlink(missing_ok=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _lock_file(staging: Path) -> Path:
    return staging.with_name(staging.name + ".lock")


def _shown(names: list[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def _try_lock(path: Path, create: bool = False) -> int | None | bool:
    """An exclusive lock on ``path`` (its descriptor), ``False`` if another process holds it, ``None`` if there is
    no such file to lock. The lock dies with its process, however it ends, and holds across containers that share
    the folder."""
    try:
        descriptor = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return False
    return descriptor


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
