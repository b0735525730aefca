"""The SIIM-ACR run-length encoding of pneumothorax masks.

This is not the usual Kaggle RLE. Pixels are visited **column-major** in image space (down each column, columns
left to right: ``mask.flatten(order="F")`` of a ``(rows, cols)`` mask), and numbers come in ``start length``
pairs where the first start is the 0-based absolute offset of the first run and every later start is the number
of background pixels since the end of the previous run. ``"-1"`` stands for an empty mask.

Masks here are always in image orientation, ``(rows, cols)``, as pydicom's ``pixel_array``. MONAI's
``LoadImage`` returns the transpose of that: see ``scripts.data.labels`` for the conversions.
"""

from __future__ import annotations

import re

import numpy as np

EMPTY = "-1"
_SLICE_FILL_MAX_RUNS = 4096
#: Larger than the pixel count of any radiograph: a number above it cannot be part of a valid RLE, and keeping
#: every number (and the sum of all of them) far below 2**63 means the int64 arithmetic below never wraps around.
MAX_NUMBER = 2**40

__all__ = ["EMPTY", "encode", "decode", "parse_runs"]


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask in image orientation ``(rows, cols)`` as an SIIM RLE string.

    Args:
        mask: bool, 0/1 or 0/255 array of shape ``(rows, cols)``.

    Returns:
        The official string (column-major, first start absolute, later starts relative gaps), or ``"-1"`` for an
        empty mask. Unlike the official encoder, a run that ends on the very last pixel is kept.

    Raises:
        ValueError: if ``mask`` is not 2-D or holds values other than {0, 1} or {0, 255}.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"RLE encode expects a 2-D (rows, cols) mask, got shape {mask.shape}")
    foreground = _foreground(mask)
    flat = foreground.ravel(order="F").view(np.int8)
    edges = np.diff(flat, prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    if starts.size == 0:
        return EMPTY
    ends = np.flatnonzero(edges == -1)
    gaps = starts.copy()
    gaps[1:] -= ends[:-1]
    pairs = np.empty(2 * starts.size, dtype=np.int64)
    pairs[0::2] = gaps
    pairs[1::2] = ends - starts
    return " ".join(map(str, pairs.tolist()))


def parse_runs(rle: str) -> tuple[np.ndarray, np.ndarray]:
    """Check the syntax of an SIIM RLE string and return absolute run ``(starts, lengths)``.

    ``"-1"``, ``""`` and whitespace (with any surrounding spaces, as in the stage-1 CSV) give empty arrays.
    The check needs no image size; :func:`decode` adds the bounds check.

    Raises:
        ValueError: on an odd count of numbers, a non-integer, a number too large for any image, a zero or negative
            length, or a negative gap.
    """
    text = rle.strip() if isinstance(rle, str) else None
    if text is None:
        raise ValueError(f"RLE must be a string, got {type(rle).__name__}")
    if text in ("", EMPTY):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    tokens = text.split()
    if len(tokens) % 2:
        raise ValueError(f"RLE has an odd count of numbers ({len(tokens)}): starts and lengths must come in pairs")
    overlong = next((token for token in tokens if len(token) > 20), None)  # int64 holds 19 digits
    if overlong is not None:
        kind = "number" if overlong.lstrip("+-").isdigit() else "non-integer value"
        raise ValueError(f"RLE holds a {kind} of {len(overlong)} characters ({overlong[:20]}...), larger than any image")
    bad = next((token for token in tokens if not _INTEGER.fullmatch(token)), None)
    if bad is not None:  # Python's int() would also take "+5", "5_0" and non-ASCII digits
        raise ValueError(f"RLE holds a non-integer value {bad[:40]!r}")
    values = [int(token) for token in tokens]
    too_large = next((index for index, value in enumerate(values) if abs(value) > MAX_NUMBER), None)
    if too_large is not None:
        raise ValueError(f"RLE number {too_large} ({tokens[too_large][:40]}) is larger than any image")
    if sum(values) > MAX_NUMBER:
        raise ValueError(f"RLE runs end past pixel {MAX_NUMBER}, larger than any image")
    numbers = np.array(values, dtype=np.int64)
    gaps, lengths = numbers[0::2], numbers[1::2]
    if (lengths <= 0).any():
        index = int(np.flatnonzero(lengths <= 0)[0])
        raise ValueError(f"RLE run {index} has a non-positive length {int(lengths[index])}")
    if (gaps < 0).any():
        index = int(np.flatnonzero(gaps < 0)[0])
        what = "start" if index == 0 else "gap"
        raise ValueError(f"RLE run {index} has a negative {what} {int(gaps[index])}")
    # Absolute start of run i = all gaps up to and including i + all lengths before i.
    starts = np.cumsum(gaps)
    starts[1:] += np.cumsum(lengths)[:-1]
    return starts, lengths


def decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode an SIIM RLE string into a bool mask of ``shape = (rows, cols)`` in image orientation.

    Raises:
        ValueError: on malformed input (see :func:`parse_runs`) or a run that goes past the end of the image.
    """
    if not _is_shape(shape):
        raise ValueError(f"RLE decode needs a (rows, cols) shape of two positive integers, got {shape!r}")
    rows, cols = (int(n) for n in shape)
    starts, lengths = parse_runs(rle)
    size = rows * cols
    ends = starts + lengths
    if ends.size and ends[-1] > size:
        raise ValueError(f"RLE run ends at pixel {int(ends[-1])}, past the end of a {rows}x{cols} image ({size} pixels)")
    flat = np.zeros(size, dtype=bool)
    if starts.size <= _SLICE_FILL_MAX_RUNS:  # typical masks: a few hundred runs, one slice assignment each
        for start, end in zip(starts.tolist(), ends.tolist()):
            flat[start:end] = True
    else:  # pathological masks (thousands of runs): +1 at each start, -1 at each end, running sum
        # Gaps are >= 0, so runs never overlap and each index array is free of repeats.
        steps = np.zeros(size + 1, dtype=np.int8)
        steps[starts] += 1
        steps[ends] -= 1
        flat = np.cumsum(steps[:-1], dtype=np.int8).astype(bool)
    # The runs walk the image column by column: a (cols, rows) C-order array, returned transposed as a
    # (rows, cols) view (Fortran-ordered; no copy, and its transpose, MONAI's layout, is C-contiguous).
    return flat.reshape((cols, rows)).T


def _foreground(mask: np.ndarray) -> np.ndarray:
    if mask.dtype == bool:
        return mask
    foreground = mask != 0
    values = mask[foreground]
    if values.size and (values.min() != values.max() or values.flat[0] not in (1, 255)):
        found = np.unique(values)[:5].tolist()
        raise ValueError(f"RLE encode expects a bool, 0/1 or 0/255 mask, found foreground values {found}")
    return foreground


def _is_shape(shape: object) -> bool:
    try:
        rows, cols = shape  # type: ignore[misc]
    except (TypeError, ValueError):
        return False
    integral = all(isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)) for n in (rows, cols))
    return integral and rows > 0 and cols > 0


_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)
