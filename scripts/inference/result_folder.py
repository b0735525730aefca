"""A run owns its output folder: results are written aside and replace the folder's contents as one.

An inference run writes everything into a hidden staging folder beside ``output_dir``
(``.<name>.partial-<pid>``) and, when it has finished, exchanges it with ``output_dir`` in one atomic step
(Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames). A reader of ``output_dir`` therefore sees the
previous run's complete result set or the new one, never a mix: no stale DICOM SEG or mask of an earlier run
survives beside the new ``submission.csv``. A run that fails leaves ``output_dir`` as it was.

A folder that already holds anything is refused unless the run is told to replace it (``--overwrite true``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import sys
from pathlib import Path

__all__ = ["ResultFolder"]

_STAGING = "partial"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class ResultFolder:
    """Staging and publishing of one run's results in ``output_dir``.

    Args:
        output_dir: where the results end up.
        overwrite: replace what ``output_dir`` holds; without it a non-empty folder is refused before the run.
    """

    def __init__(self, output_dir: str | os.PathLike, overwrite: bool = False) -> None:
        self.output_dir = Path(output_dir).absolute()
        self.overwrite = overwrite
        self.staging: Path | None = None

    def check(self) -> None:
        """Refuse, in one line, an ``output_dir`` that is a file, or holds anything without ``overwrite``."""
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"output_dir {self.output_dir} is a file, not a folder")
        if self.output_dir.is_dir() and not self.overwrite:
            held = sorted(entry.name for entry in self.output_dir.iterdir())
            if held:
                shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
                raise ValueError(
                    f"output_dir {self.output_dir} is not empty ({shown}): pass --overwrite true to replace its "
                    "results, or choose another folder"
                )

    def open(self) -> Path:
        """Check ``output_dir`` and create a fresh staging folder beside it (stale ones of dead runs are removed)."""
        self.check()
        self.discard()
        parent = self.output_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        for stale in parent.glob(f".{self.output_dir.name}.{_STAGING}-*"):
            if not _alive(stale.name.rsplit("-", 1)[-1]):
                shutil.rmtree(stale, ignore_errors=True)
        self.staging = parent / f".{self.output_dir.name}.{_STAGING}-{os.getpid()}"
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir()
        return self.staging

    def publish(self) -> Path:
        """Make the staging folder ``output_dir``, replacing what it held in one step."""
        if self.staging is None:
            raise RuntimeError("ResultFolder.publish before open")
        self.check()  # the folder may have filled since the run began
        staging, self.staging = self.staging, None
        if self.output_dir.is_dir() and any(self.output_dir.iterdir()):
            if _exchange(staging, self.output_dir):
                shutil.rmtree(staging, ignore_errors=True)  # now the previous results
                return self.output_dir
            previous = staging.with_name(f".{self.output_dir.name}.replaced-{os.getpid()}")
            os.rename(self.output_dir, previous)
            os.rename(staging, self.output_dir)
            shutil.rmtree(previous, ignore_errors=True)
            return self.output_dir
        if self.output_dir.is_dir():
            self.output_dir.rmdir()
        os.rename(staging, self.output_dir)
        return self.output_dir

    def discard(self) -> None:
        """Remove the staging folder of a run that failed; ``output_dir`` keeps what it held."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None


def _alive(pid_text: str) -> bool:
    try:
        os.kill(int(pid_text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
