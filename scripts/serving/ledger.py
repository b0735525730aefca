"""What the DICOMweb poller did, instance by instance: an append-only journal, so that a rerun does nothing twice.

``ledger.jsonl`` holds one JSON object per line: ``sop`` (the SOPInstanceUID), ``study``, ``series``, ``status``,
``time`` (UTC, ISO 8601) and, by status, ``reason``, ``probability``, ``seg_uid``, ``seg_file`` and ``batch``.
The last line of an instance is its state:

* ``stored``: its DICOM SEG is on the server (``seg_uid``), in the source study;
* ``negative``: no pneumothorax found; there is no SEG to store (``probability`` says how sure);
* ``skipped``: the input rules leave it out (``reason``: a lateral view, a CT...);
* ``failed``: this instance could not be fetched, read or stored (``reason``); retried only when asked;
* ``inferred``: its SEG is written (``seg_file``) but not yet stored: the next run stores that same file (the
  same SOPInstanceUID, so the server never holds two SEGs for one result).

Each record is appended with one ``write`` and ``fsync`` before the poller moves on, so a run that is killed
loses at most the record it was writing: a torn last line is dropped when the ledger is next opened, and that
instance is done again.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["DONE", "STATUSES", "Ledger"]

STATUSES = ("stored", "negative", "skipped", "failed", "inferred")
#: the states a rerun leaves alone (``failed`` unless it is told to retry failures)
DONE = ("stored", "negative", "skipped", "failed")


class Ledger:
    """The journal at ``path`` (created on the first record); :attr:`states` is the last record per SOPInstanceUID.

    ``repair``: cut a torn last line off the file (only the writer, which holds the poller's lock, may); a reader
    just leaves it out, since it may be a record being appended.

    Raises:
        ValueError: a line other than the last is not a record (the file is not a ledger, or was edited).
    """

    def __init__(self, path: str | os.PathLike, repair: bool = False) -> None:
        self.path = Path(path)
        self.repair = repair
        self.states: dict[str, dict] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) < len(data) and self.repair:  # a record torn by a killed run: it never happened
            with open(self.path, "r+b") as handle:
                handle.truncate(len(complete))
                os.fsync(handle.fileno())
        for number, line in enumerate(complete.decode("utf-8", "replace").splitlines(), 1):
            try:
                record = json.loads(line)
                if record["status"] not in STATUSES or not isinstance(record["sop"], str):
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{self.path}, line {number}: not a ledger record") from None
            self.states[record["sop"]] = record

    def state(self, sop: str) -> dict | None:
        return self.states.get(sop)

    def is_done(self, sop: str, retry_failed: bool = False) -> bool:
        record = self.states.get(sop)
        done = DONE if not retry_failed else tuple(s for s in DONE if s != "failed")
        return record is not None and record["status"] in done

    def record(self, sop: str, study: str, series: str, status: str, **details: object) -> dict:
        """Append a record and make it durable before returning it."""
        if status not in STATUSES:
            raise ValueError(f"unknown ledger status {status!r}")
        record = {"sop": sop, "study": study, "series": series, "status": status,
                  "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  **{key: value for key, value in details.items() if value is not None}}  # fmt: skip
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while line:
                line = line[os.write(descriptor, line) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        self.states[sop] = record
        return record

    def counts(self) -> Counter:
        return Counter(record["status"] for record in self.states.values())
