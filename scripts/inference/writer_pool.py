"""Per-image writes run beside the engine: forked writer processes, results in submission order, a bounded backlog.

Writing an image's files costs far more CPU than a GPU spends on the image's sliding window (``python -m
scripts.benchmark`` measures both), so the engine's thread only hands each image's job to the pool and goes on. A
writer process that dies (killed, crashed) costs no image: the pool is dropped, and its jobs and all later ones are
written in the calling thread. Writer processes end with the process that started them, however it ends
(``scripts.utils.processes``): a killed inference run leaves no orphans holding memory.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from scripts.utils.processes import forking_safely, process_pool

__all__ = ["WriterPool"]

logger = logging.getLogger(__name__)


class WriterPool:
    """Run ``function(*job)`` for each submitted job in ``workers`` processes (0: in the calling thread).

    :meth:`submit` keeps at most ``backlog`` jobs per worker in flight and returns the ``(tag, result)`` pairs of the
    jobs that left; :meth:`drain` gives back the rest, all in submission order. Start it (:meth:`start`) before the
    data loader forks its own workers.

    Args:
        function: a module-level function (it crosses to the processes by name); what it returns must pickle.
        workers: writer processes.
        temp_folders: where the jobs write; stale temporary files (``.*.tmp``, as ``atomic_open`` names them) of
            writes cut short by a dead process are removed from them.
        backlog: jobs in flight per worker before :meth:`submit` waits for the oldest.
    """

    def __init__(self, function: Callable, workers: int, temp_folders: Sequence[str | Path] = (), backlog: int = 4) -> None:
        if int(workers) < 0:
            raise ValueError(f"writer workers must be >= 0, got {workers}")
        self.function = function
        self.requested_workers = int(workers)
        self.workers = self.requested_workers
        self.temp_folders = [Path(folder) for folder in temp_folders]  # may be set again before each start
        self.backlog = backlog
        self._executor: ProcessPoolExecutor | None = None
        self._pending: deque[tuple[object, tuple, Future | object]] = deque()  # (tag, job, result), submission order

    def start(self) -> None:
        """Start the processes now (not while the engine runs); a fresh run gets its requested workers back."""
        self.close(cancel=True)
        self.workers = self.requested_workers
        self._pending.clear()
        self._open()

    def _open(self) -> None:
        if self.workers and self._executor is None:
            with forking_safely():  # the processes start (fork) at the first job
                self._executor = process_pool(self.workers)
                self._executor.submit(int).result()

    def close(self, cancel: bool = False) -> None:
        """Stop the processes (after their jobs, or cancelling those not started)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=cancel)
            self._executor = None

    def submit(self, tag: object, job: tuple) -> list[tuple[object, object]]:
        """Queue ``job``; returns the ``(tag, result)`` of earlier jobs that finished or had to be waited for, so that
        at most ``backlog`` per worker stay in flight."""
        self._open()
        result: Future | object | None = None
        if self._executor is not None:
            try:
                result = self._executor.submit(self.function, *job)
            except BrokenProcessPool:
                self._lose_processes()
        self._pending.append((tag, job, result if result is not None else self.function(*job)))
        return list(self.drain(keep=self.backlog * self.workers))

    def drain(self, keep: int = 0) -> Iterator[tuple[object, object]]:
        """``(tag, result)`` of finished jobs in submission order, waiting until at most ``keep`` are in flight (so a
        slow disk cannot fill memory); a job whose process died is run again here."""
        while self._pending:
            tag, job, result = self._pending[0]
            if isinstance(result, Future):
                if len(self._pending) <= keep and not result.done():
                    return
                try:
                    result = result.result()
                except BrokenProcessPool:
                    self._lose_processes()
                    result = self.function(*job)
            self._pending.popleft()
            yield tag, result

    def in_flight(self) -> int:
        return len(self._pending)

    def _lose_processes(self) -> None:
        """A writer process died: write the rest in this thread."""
        if self._executor is not None:
            logger.warning("a writer process died: the remaining files are written in the main process")
            self._executor.shutdown(wait=True, cancel_futures=True)  # the executor has ended its other processes
            self._executor, self.workers = None, 0
            for folder in self.temp_folders:
                for stale in folder.glob(".*.tmp"):
                    stale.unlink(missing_ok=True)
