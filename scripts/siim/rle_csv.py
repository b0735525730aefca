"""Reading and writing the SIIM-ACR annotation CSVs.

Three real variants exist and all are read here:

* stage-1 ``train-rle.csv``: header ``ImageId, EncodedPixels`` where the second name and every value start with a
  space (`` -1``, `` 175349 7 1013 12 ...``);
* stage-2 ``stage_2_train.csv``: header ``ImageId,EncodedPixels``, no spaces;
* the official ``train-rle-sample.csv``: UTF-8 byte-order mark and no header.

An image with several pneumothorax regions has one row per annotation; ``-1`` means no pneumothorax.
"""

from __future__ import annotations

import codecs
import csv
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from scripts.siim.rle import EMPTY, parse_runs
from scripts.utils.files import write_csv

logger = logging.getLogger(__name__)

HEADER = ("ImageId", "EncodedPixels")
#: Longest line read: far beyond any real annotation (a pneumothorax of a few thousand runs is tens of kB).
MAX_LINE_BYTES = 1 << 20
CSV_STYLES = ("stage1", "stage2")

__all__ = ["SiimAnnotations", "read_rle_csv", "rows_from_annotations", "write_rle_csv"]


@dataclass
class SiimAnnotations:
    """What a SIIM CSV says: ImageId -> the list of its annotation RLE strings (empty list = no pneumothorax).

    ``problems`` lists, one line each, what was wrong in the file and what was done about it.
    """

    path: Path
    annotations: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def positive_ids(self) -> list[str]:
        return [image_id for image_id, rles in self.annotations.items() if rles]

    def __len__(self) -> int:
        return len(self.annotations)


def read_rle_csv(path: str | os.PathLike, max_line_bytes: int = MAX_LINE_BYTES) -> SiimAnnotations:
    """Read any of the three SIIM CSV variants.

    Several rows of one ImageId are gathered (to be combined by union). Nothing is dropped silently: an image
    whose rows mix ``-1`` with annotations keeps its annotations, a repeated identical row is kept once, and a row
    that cannot be used is skipped: a wrong column count, an empty ImageId, a malformed RLE, a line that is not
    UTF-8 text, an unclosed quote, a line longer than ``max_line_bytes``. Each is reported in ``problems`` as
    ``file:line: problem``, and logged as a warning. Rows never span lines (the challenge's files hold no quoted
    line breaks), so one broken row cannot swallow the ones after it.

    Raises:
        ValueError: the file is not a SIIM annotation CSV at all (a header with other column names), or it holds
            no usable data row; the message names the file.
        FileNotFoundError: if ``path`` does not exist.
    """
    path = Path(path)
    result = SiimAnnotations(path=path)
    seen_rows: set[tuple[str, str]] = set()
    says_empty: set[str] = set()
    with open(path, "rb") as handle:
        csv.field_size_limit(max(csv.field_size_limit(), max_line_bytes))  # a field may be as long as a line
        for line_number, text in _text_lines(handle, path, result, max_line_bytes):
            try:
                (row,) = csv.reader([text], strict=True)
            except csv.Error as error:
                problem = "unclosed quote" if "end of data" in str(error) else f"not a CSV row ({error})"
                _report(result, f"{path}:{line_number}: {problem}; row skipped")
                continue
            cells = [cell.strip() for cell in row]
            if line_number == 1 and cells and cells[0] == HEADER[0]:
                if tuple(cells) != HEADER:
                    raise ValueError(f"{path}: line 1: header {row} is not {list(HEADER)}")
                continue
            if not any(cells):
                continue
            problem = _row_problem(cells)
            if problem:
                _report(result, f"{path}:{line_number}: {problem}; row skipped")
                continue
            image_id, rle = cells
            if (image_id, rle) in seen_rows:
                _report(result, f"{path}:{line_number}: duplicate row for {image_id}; kept once")
                continue
            seen_rows.add((image_id, rle))
            rles = result.annotations.setdefault(image_id, [])
            if rle == EMPTY:
                says_empty.add(image_id)
            else:
                rles.append(rle)
    if not result.annotations:
        detail = f" ({len(result.problems)} rows skipped; first: {result.problems[0]})" if result.problems else ""
        raise ValueError(f"{path}: no usable data rows{detail}")
    for image_id in sorted(says_empty):
        if result.annotations[image_id]:
            _report(
                result,
                f"{path}: {image_id} has both -1 and {len(result.annotations[image_id])} annotation(s);"
                " the annotations are kept",
            )
    return result


def _text_lines(handle: BinaryIO, path: Path, result: SiimAnnotations, max_bytes: int) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line that is UTF-8 text of at most ``max_bytes``; the others are reported.

    A line is read at most ``max_bytes`` at a time, so an endless line costs no memory. The byte-order mark of the
    official sample file is dropped.
    """
    number = 0
    while True:
        raw = handle.readline(max_bytes + 1)
        if not raw:
            return
        number += 1
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = handle.readline(1 << 16)
            _report(result, f"{path}:{number}: line longer than {max_bytes} bytes; row skipped")
            continue
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as error:
            byte = raw[error.start]
            _report(result, f"{path}:{number}: not UTF-8 text (byte 0x{byte:02x} at column {error.start + 1}); row skipped")


def write_rle_csv(path: str | os.PathLike, rows: Iterable[tuple[str, str]], style: str = "stage2") -> None:
    """Write ``(ImageId, EncodedPixels)`` rows atomically in the ``stage1`` or ``stage2`` layout.

    ``stage1`` reproduces ``train-rle.csv``: a space before the second header name and before every value.
    ``stage2`` is plain CSV, which is also the competition's submission format.
    """
    if style not in CSV_STYLES:
        raise ValueError(f"unknown SIIM CSV style {style!r}; expected one of {CSV_STYLES}")
    prefix = " " if style == "stage1" else ""
    write_csv(path, [HEADER[0], prefix + HEADER[1]], ((image_id, prefix + rle) for image_id, rle in rows))


def rows_from_annotations(annotations: Mapping[str, list[str]]) -> list[tuple[str, str]]:
    """One CSV row per annotation, ``-1`` for an image without any, in the mapping's order."""
    return [(image_id, rle) for image_id, rles in annotations.items() for rle in (rles or [EMPTY])]


def _row_problem(cells: list[str]) -> str | None:
    if len(cells) != 2:
        return f"expected 2 columns (ImageId, EncodedPixels), found {len(cells)}"
    image_id, rle = cells
    if not image_id:
        return "empty ImageId"
    if not rle:
        return f"empty EncodedPixels for {image_id} (use -1 for no pneumothorax)"
    try:
        parse_runs(rle)
    except ValueError as error:
        return f"malformed EncodedPixels for {image_id}: {error}"
    return None


def _report(result: SiimAnnotations, message: str) -> None:
    result.problems.append(message)
    logger.warning(message)
