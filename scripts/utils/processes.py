"""Worker processes that end with the process that started them.

:func:`process_pool` is the one way the bundle starts a pool of processes (the inference writers, the check of the
training files): forked on Linux (the parent's modules are already imported; nothing is pickled but the jobs),
spawned elsewhere. Each worker asks the kernel for SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``), so a
parent killed with SIGKILL leaves no orphans holding memory, and leaves Ctrl-C and SIGTERM to its parent, which
shuts the pool down.

:func:`forking_safely` wraps code that forks (writer pools, data loader workers) in a process that may hold
objects of a threaded runtime: a forked child must never run their destructors (see there).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import os
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor

__all__ = ["ends_with_this_process", "forking_safely", "process_pool"]

_PR_SET_PDEATHSIG = 1


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``workers`` processes that end with the calling process."""
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_die_with_parent, initargs=(os.getpid(),)
    )


#: Nesting depth of :func:`forking_safely` (only the outermost collects, freezes and unfreezes), under its lock,
#: and whether the outermost found objects frozen already (by the application: then they stay frozen).
_FROZEN = {"depth": 0, "before": False}
_FROZEN_LOCK = threading.Lock()


@contextlib.contextmanager
def forking_safely():
    """Within it, processes forked from this one never free the objects this one holds when it is entered.

    A forked child has only the forking thread, but a copy of every object, garbage in reference cycles included.
    If the child's garbage collector frees such an object whose destructor waits for its runtime's threads (an
    OpenVINO Core held by an earlier inference run's network did), the child hangs for ever. So this collects this
    process's garbage first (here, where the threads exist), and moves every object left to the collector's
    permanent generation (:func:`gc.freeze`) until the block ends: a child forked inside never frees them, even
    where it drops its own references to them. Nesting and threads are fine; objects the application froze itself
    stay frozen.
    """
    with _FROZEN_LOCK:
        if _FROZEN["depth"] == 0:
            _FROZEN["before"] = gc.get_freeze_count() > 0
            gc.collect()
            gc.freeze()
        _FROZEN["depth"] += 1
    try:
        yield
    finally:
        with _FROZEN_LOCK:
            _FROZEN["depth"] -= 1
            if _FROZEN["depth"] == 0 and not _FROZEN["before"]:
                gc.unfreeze()


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
