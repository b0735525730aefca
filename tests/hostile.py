"""Builders of hostile inputs for tests: decompression bombs, files that only look like DICOM."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import encapsulate

from tests.helpers import write_test_dicom


def rgb_dicom(path: Path, uid: str = "1.2.3.999") -> Path:
    """A 32 x 32 DICOM whose pixels are RGB (three samples per pixel): not a greyscale radiograph."""
    write_test_dicom(path, np.zeros((32, 32), np.uint8), sop_instance_uid=uid, jpeg_quality=None)
    ds = pydicom.dcmread(path)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = np.zeros((32, 32, 3), np.uint8).tobytes()
    ds.save_as(path)
    return path


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


def deflate_bomb(path: Path, inflated_bytes: int, uid="1.2.826.0.1.3680043.8.498.667") -> Path:
    """A valid 16 x 16 radiograph in the Deflated Explicit VR Little Endian transfer syntax, followed by a private
    element of ``inflated_bytes`` zeros: a small file whose dataset inflates to that size. Written in a stream."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    write_test_dicom(path, np.full((16, 16), 128, np.uint8), sop_instance_uid=uid, jpeg_quality=None)
    ds = pydicom.dcmread(path)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False  # the encoding a deflated dataset has
    write_dataset(body, ds)
    meta = ds.file_meta
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = io.BytesIO()
    write_file_meta_info(head, meta, enforce_standard=True)
    deflate = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    size = inflated_bytes & ~1
    private = struct.pack("<HH2sH4s", 0x7FE1, 0x0010, b"LO", 4, b"BOMB")  # a private creator, then its block
    private += struct.pack("<HH2s2xI", 0x7FE1, 0x1010, b"OB", size)
    zeros = bytes(1 << 24)
    with open(path, "wb") as handle:
        handle.write(bytes(128) + b"DICM" + head.getvalue())
        handle.write(deflate.compress(body.getvalue() + private))
        for start in range(0, size, len(zeros)):
            handle.write(deflate.compress(zeros[: min(len(zeros), size - start)]))
        handle.write(deflate.flush())
    return path
