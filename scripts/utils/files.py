"""Writing files safely: atomic replacement, and file names derived from identifiers that stay inside their folder."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

__all__ = ["atomic_open", "read_reasons_csv", "safe_name", "try_lock", "write_csv", "write_reasons_csv"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it is flushed, fsynced and renamed over ``path``.

    A reader sees the old file or the complete new one, never a truncated one. On an exception the temporary file
    is removed and ``path`` is left untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files only (mode 'w' or 'wb'), got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_json(path: str | os.PathLike, content) -> None:
    """``content`` as indented UTF-8 JSON, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=4)


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """A UTF-8 CSV with ``\\n`` line ends, atomically, that any CSV reader parses back into the same fields.

    A field holding a line break (``\\r`` included, which Python's writer leaves unquoted with ``\\n`` line ends) is
    quoted; a file name that is not UTF-8 (its bytes arrive as surrogates) is written with those bytes as ``\\xNN``
    escapes instead of making the whole file unwritable.
    """
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        plain = csv.writer(handle, lineterminator="\n")
        quoted = csv.writer(handle, lineterminator="\n", quoting=csv.QUOTE_ALL)
        for row in [header, *rows]:
            fields = [_printable(str(field)) for field in row]
            (quoted if any("\r" in field for field in fields) else plain).writerow(fields)


def _printable(text: str) -> str:
    try:  # a file name's undecodable bytes (surrogateescape) back to bytes, shown as \\xNN
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # any other lone surrogate: shown as \\udNNN
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def write_reasons_csv(path: str | os.PathLike, rows: Iterable[tuple[str, str]]) -> None:
    """A ``file,reason`` CSV (errors, skipped inputs, bad training files), atomically (:func:`write_csv`)."""
    write_csv(path, ["file", "reason"], rows)


def read_reasons_csv(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The ``(file, reason)`` rows of a :func:`write_reasons_csv` file; none if it does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [(row["file"], row["reason"]) for row in csv.DictReader(handle)]


def try_lock(path: str | os.PathLike) -> int | None:
    """An exclusive lock on ``path`` (created if need be; ``fcntl.flock``, released when the descriptor closes or the
    process ends): its descriptor, or None if another process holds it."""
    import fcntl

    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def safe_name(identifier: str, max_length: int = 128) -> str:
    """A file name derived from ``identifier`` (a SOPInstanceUID, normally) that stays inside its folder.

    UIDs (digits and dots) are kept as they are. Anything else is reduced to ``[A-Za-z0-9._-]``, leading dots are
    dropped (no ``..`` or hidden files), and a short hash of the original is appended whenever something was
    changed, so that two different identifiers never share a name.
    """
    cleaned = _UNSAFE.sub("_", str(identifier)).lstrip(".")
    if cleaned == identifier and 0 < len(cleaned) <= max_length:
        return cleaned
    digest = hashlib.sha1(str(identifier).encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{cleaned[: max_length - 13]}_{digest}" if cleaned else digest
