"""Builders of hostile inputs for tests: decompression bombs, files that only look like DICOM."""

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import encapsulate

from tests.helpers import write_test_dicom


def jpeg_declaring(rows: int, cols: int) -> bytes:
    """A tiny valid JPEG Baseline codestream whose start-of-frame header is rewritten to declare rows x cols."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16), 128, np.uint8), mode="L").save(buffer, format="JPEG", quality=90)
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = rows.to_bytes(2, "big") + cols.to_bytes(2, "big")
    return bytes(data)


def jpeg_bomb(path: Path, frame=(60000, 60000), header=(60000, 60000), uid="1.2.826.0.1.3680043.8.498.666") -> Path:
    """A few-kB JPEG-Baseline DICOM whose JPEG frame declares ``frame`` and whose Rows x Columns say ``header``."""
    write_test_dicom(path, np.full((16, 16), 128, np.uint8), sop_instance_uid=uid, jpeg_quality=90)
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = header
    ds.PixelData = encapsulate([jpeg_declaring(*frame)])
    ds.save_as(path)
    return path
