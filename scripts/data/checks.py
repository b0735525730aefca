"""Every training and validation file checked before training starts: a bad file is found in seconds, not after the
cache has been filling for minutes, and all bad files are listed at once.

Per item, without decoding pixels: the file is there and is DICOM (``scripts.data.reader.file_problem``), its
header reads to the end, its declared size is within ``max_image_pixels`` and its native pixel data is as long
as the header says, it is a single grey-scale frame, and its RLE annotations fit inside it (or its label file
exists). Files are checked in parallel processes.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import pydicom

from scripts.data.png_reader import is_png, png_problem
from scripts.data.reader import DEFAULT_MAX_PIXELS, file_problem, header_problem, max_file_bytes
from scripts.siim.datalist import LABEL_FILE_SUFFIXES
from scripts.siim.rle import parse_runs
from scripts.utils.errors import error_reason
from scripts.utils.files import write_reasons_csv
from scripts.utils.flags import switches
from scripts.utils.processes import process_pool

__all__ = ["check_datalist", "item_problem"]

logger = logging.getLogger(__name__)
#: Bad files named in the error message itself; the report file lists them all.
_SHOWN = 20


def item_problem(item: dict, max_pixels: int = DEFAULT_MAX_PIXELS, png: bool = False) -> str | None:
    """Why this datalist item cannot be trained on, or None (a check that fails is the item's problem too).

    With ``png`` a PNG radiograph is an image too (the classifier's NIH ChestX-ray14 items, image-level labels
    only): its header is checked (``scripts.data.png_reader.png_problem``)."""
    try:
        if png and is_png(str(item.get("image", ""))):
            return png_problem(str(item["image"]), max_pixels)
        return _item_problem(item, max_pixels)
    except Exception as error:  # a header no check foresaw: it names the file like any other problem
        return f"cannot be checked: {error_reason(error)}"


def _item_problem(item: dict, max_pixels: int) -> str | None:
    path = str(item.get("image", ""))
    problem = file_problem(path, max_bytes=max_file_bytes(max_pixels))
    if problem:
        return problem
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, defer_size=1024)
    except Exception as error:
        return f"not a readable DICOM file ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    if any("End of file reached" in str(warning.message) for warning in caught):
        return "truncated (the file ends inside its data)"
    problem = header_problem(ds, max_pixels)
    if problem:
        return problem
    rows, cols = int(ds.Rows), int(ds.Columns)
    label = item.get("label")
    if isinstance(label, str) and label.lower().endswith(LABEL_FILE_SUFFIXES):
        return None if Path(label).is_file() else f"label file {label} not found"
    for annotation in [label] if isinstance(label, str) else list(label or []):
        try:
            starts, lengths = parse_runs(annotation)
        except ValueError as error:
            return f"annotation: {error}"
        if starts.size and int(starts[-1] + lengths[-1]) > rows * cols:
            return f"annotation runs past the end of the {rows} x {cols} image"
    return None


def _problems(items: list[dict], max_pixels: int, workers: int, png: bool) -> list[str | None]:
    if workers <= 1 or len(items) < 64:
        return [item_problem(item, max_pixels, png) for item in items]
    with process_pool(workers) as pool:
        return list(pool.map(item_problem, items, [max_pixels] * len(items), [png] * len(items), chunksize=32))


@switches(skip_bad="skip_bad_files", png="png_images")
def check_datalist(
    datalist: dict[str, list[dict]],
    report: str | os.PathLike,
    skip_bad: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 1,
    png: bool = False,
) -> dict[str, list[dict]]:
    """Check the ``training`` and ``validation`` items of ``datalist`` (see the module docstring); with ``png``
    (``png_images``, the classifier's) PNG radiographs are images too.

    Bad files are written to ``report`` (``file,reason``). With ``skip_bad`` they are left out (and logged);
    otherwise the run stops at once with all of them listed.

    Raises:
        ValueError: bad files were found and ``skip_bad`` is off; the message lists them and names ``report``.
    """
    keys = [key for key in ("training", "validation") if key in datalist]
    items = [item for key in keys for item in datalist[key]]
    problems = _problems(items, int(max_pixels), int(workers or 1), png)
    bad = {id(item): problem for item, problem in zip(items, problems) if problem}
    if not bad:
        return datalist
    rows = [(str(item.get("image")), bad[id(item)]) for item in items if id(item) in bad]
    write_reasons_csv(report, rows)
    listed = "\n".join(f"  {path}: {reason}" for path, reason in rows[:_SHOWN])
    more = f"\n  ... and {len(rows) - _SHOWN} more" if len(rows) > _SHOWN else ""
    if not skip_bad:
        raise ValueError(
            f"{len(rows)} of {len(items)} training and validation files cannot be used (all listed in {report}); "
            f"fix or remove them, or pass --skip_bad_files true to leave them out:\n{listed}{more}"
        )
    logger.warning("%d of %d files left out (listed in %s):\n%s%s", len(rows), len(items), report, listed, more)
    return {**datalist, **{key: [item for item in datalist[key] if id(item) not in bad] for key in keys}}
