"""Worker processes that end with the process that started them.

:func:`process_pool` is the one way the bundle starts a pool of processes (the inference writers, the check of the
training files): forked on Linux (the parent's modules are already imported; nothing is pickled but the jobs),
spawned elsewhere. Each worker asks the kernel for SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``), so a
parent killed with SIGKILL leaves no orphans holding memory, and leaves Ctrl-C and SIGTERM to its parent, which
shuts the pool down.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

__all__ = ["ends_with_this_process", "process_pool"]

_PR_SET_PDEATHSIG = 1


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``workers`` processes that end with the calling process."""
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_die_with_parent, initargs=(os.getpid(),)
    )


def _die_with_parent(parent: int) -> None:
    """In a worker: the default SIGTERM (not the parent's handler), and SIGTERM when the parent dies."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent shuts the pool down
    _sigterm_when_parent_dies(parent)


def ends_with_this_process():
    """A ``preexec_fn`` for ``subprocess.Popen``: the child (and what it executes) gets SIGTERM when the calling
    process dies, even by SIGKILL (Linux)."""
    parent = os.getpid()
    return lambda: _sigterm_when_parent_dies(parent)


def _sigterm_when_parent_dies(parent: int) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
