"""Reading DICOM radiographs: a MONAI reader that keeps the tags radiographs need and refuses what is not one.

Reading goes through MONAI's ``PydicomReader`` (never ITK, which turns a 2-D ``.dcm`` into a 3-D volume), so a
loaded image is the **transpose** of pydicom's ``pixel_array``: ``(cols, rows)``.

:class:`LoadRadiographd` is the loading step of the bundle's pipelines: it uses :class:`RadiographReader` alone.
MONAI's ``LoadImaged`` falls back to its other readers when the one given fails, so a PNG renamed ``x.dcm`` would be
read by Pillow as if it were a radiograph.

Before any pixel is decoded, the size the file declares (Rows x Columns x frames x bytes per sample, and the size
in the compressed frame's own header) is checked against ``max_pixels``: a few kilobytes of JPEG can declare
60000 x 60000 pixels, and decoding them would take gigabytes.
"""

from __future__ import annotations

import errno
import os
import struct
import warnings
import zlib
from collections.abc import Hashable, Mapping
from pathlib import Path

import pydicom
from monai.config import KeysCollection
from monai.data import PydicomReader
from monai.transforms import LoadImage, MapTransform

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "RADIOGRAPH_TAGS",
    "LoadRadiographd",
    "RadiographReader",
    "declared_size",
    "file_problem",
    "header_problem",
    "max_file_bytes",
    "size_problem",
]

#: Tags copied into a loaded image's metadata as plain values (collatable, readable by transforms).
RADIOGRAPH_TAGS = ("PhotometricInterpretation", "BitsStored", "SOPInstanceUID", "Rows", "Columns", "PresentationLUTShape")
#: Pixels a radiograph may declare; far above a 4300 x 3500 detector, far below what fills a loader's memory.
DEFAULT_MAX_PIXELS = 50_000_000
#: What a file that is not DICOM starts with, to say what it is.
_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x5c\x01", "a NIfTI image"),
)
#: Start-of-frame markers of JPEG (baseline, extended, progressive, lossless) and JPEG-LS: height and width follow.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


class RadiographReader(PydicomReader):
    """``PydicomReader`` for single-frame greyscale radiographs.

    Adds :data:`RADIOGRAPH_TAGS` to the metadata (so ``NormalizeRadiographd`` can invert MONOCHROME1 and knows
    the bit depth) and refuses, with an error naming the file and the problem, what is not a greyscale single-frame
    DICOM image: a missing or empty file, a dangling link or a link loop, another file format, colour, several
    frames, no pixel data, and a declared size over ``max_pixels`` (checked before decoding).

    Args:
        max_pixels: most pixels (Rows x Columns x frames) a file may declare, in its header or in its compressed
            frame; bytes are bounded by it too (``max_pixels`` x bytes per sample).
        kwargs: as ``PydicomReader``.
    """

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS, **kwargs) -> None:
        super().__init__(**kwargs)
        if int(max_pixels) <= 0:
            raise ValueError(f"RadiographReader: max_pixels must be positive, got {max_pixels}")
        self.max_pixels = int(max_pixels)

    def read(self, data, **kwargs):
        names = list(data) if isinstance(data, (list, tuple)) else [data]
        for name in names:
            problem = file_problem(name, max_bytes=max_file_bytes(self.max_pixels))
            if problem:
                raise ValueError(f"{name}: {problem}")
        try:
            return super().read(data, **kwargs)
        except pydicom.errors.InvalidDicomError as error:
            raise ValueError(f"{names[0] if len(names) == 1 else names}: not a DICOM file ({error})") from error

    def _get_array_data(self, img, filename):
        problem = header_problem(img, self.max_pixels)
        if problem:
            raise ValueError(f"{filename}: {problem}")
        try:
            array = super()._get_array_data(img, filename)
        except Exception as error:  # pydicom raises many types for broken pixel data
            raise ValueError(f"{filename}: pixel data cannot be decoded: {error}") from error
        if array.ndim != 2:  # e.g. a compressed stream holding several frames
            rows, columns = int(img.Rows), int(img.Columns)
            raise ValueError(f"{filename}: pixel data decodes to shape {tuple(array.shape)}, not one {rows} x {columns} frame")
        return array

    def get_data(self, img):
        # Radiographs carry no ImagePositionPatient / ImageOrientationPatient: an identity affine is right for
        # them, so PydicomReader's warning about it is noise on every file.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ImageOrientationPatient.*", category=UserWarning)
            return super().get_data(img)

    def _get_meta_dict(self, img) -> dict:
        metadata = super()._get_meta_dict(img)
        for keyword in RADIOGRAPH_TAGS:
            value = getattr(img, keyword, None)
            if value is not None:
                metadata[keyword] = int(value) if isinstance(value, int) else str(value)
        metadata.setdefault("PresentationLUTShape", "IDENTITY")  # every image has the key, so batches collate
        return metadata


class LoadRadiographd(MapTransform):
    """``LoadImaged`` with :class:`RadiographReader` and no other reader: a file that is not a DICOM radiograph is
    an error naming it, never an image read some other way.

    Args:
        keys: keys holding file paths.
        max_pixels: as :class:`RadiographReader`.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(self, keys: KeysCollection, max_pixels: int = DEFAULT_MAX_PIXELS, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reader = RadiographReader(max_pixels=max_pixels)
        self.loader = LoadImage(reader=self.reader, image_only=True)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key], reader=self.reader)  # the runtime reader: MONAI tries no other
        return d


def file_problem(path: str | os.PathLike, max_bytes: int) -> str | None:
    """Why ``path`` cannot be a DICOM radiograph before it is parsed (missing, a dangling link, a link loop, a
    folder, empty, over ``max_bytes``, another format), or None."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop"
        if path.is_symlink():
            return f"dangling symbolic link (to {os.readlink(path)})"
        return "no such file"
    if path.is_dir():
        return "a folder, not a file"
    if stat.st_size == 0:
        return "empty file (0 bytes)"
    if stat.st_size > max_bytes:
        return f"{stat.st_size} bytes, more than a radiograph within the pixel limit can take"
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
            if head[128:132] == b"DICM":
                return _inflated_size_problem(handle, max_bytes)
    except OSError as error:
        return f"cannot be read: {error.strerror}"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return f"{what}, not DICOM"
    return None


def _inflated_size_problem(handle, max_bytes: int) -> str | None:
    """A Deflated Explicit VR Little Endian file (a legal transfer syntax) whose dataset inflates to more than
    ``max_bytes``: pydicom would inflate all of it in memory before any other check runs. Counted by inflating in
    bounded steps, keeping nothing; ``handle`` is the open file, just past its ``DICM`` marker."""
    from pydicom.filereader import _read_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    try:
        meta = _read_file_meta_info(handle)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return None
        inflate, inflated = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while chunk := handle.read(1 << 20):
            while chunk and inflated <= max_bytes:
                inflated += len(inflate.decompress(chunk, 1 << 24))
                chunk = inflate.unconsumed_tail
            if inflated > max_bytes:
                return f"its deflated data inflates to more than {max_bytes} bytes (a deflate bomb?)"
    except Exception:  # not this check's business: the reader says what is wrong with the file
        return None
    return None


def max_file_bytes(max_pixels: int) -> int:
    """The largest file a radiograph within ``max_pixels`` can be: 8 bytes a pixel and room for its header."""
    return 8 * int(max_pixels) + (64 << 20)


def header_problem(ds: pydicom.Dataset, max_pixels: int) -> str | None:
    """Why the header of ``ds`` is not that of a single-frame grey-scale radiograph that is safe to decode, or None.

    Besides the declared size (:func:`size_problem`), native pixel data must be as long as one frame: shorter is a
    truncated file, two frames or more (Rows edited, the data stored twice) would decode to several frames."""
    try:
        samples = _integer(ds, "SamplesPerPixel", 1)
        if samples != 1:
            photometric = getattr(ds, "PhotometricInterpretation", "?")
            return f"{samples} samples per pixel ({photometric}); a greyscale radiograph is needed"
        size = declared_size(ds)
        if size["frames"] != 1:
            return f"{size['frames']} frames; a single-frame radiograph is needed"
        if "PixelData" not in ds:
            return "no pixel data" + (" (float pixel data, not a radiograph's)" if _has_float_pixels(ds) else "")
        if not str(ds.get("PhotometricInterpretation", "") or "").strip():
            return "no PhotometricInterpretation: its pixels cannot be read as MONOCHROME1 or MONOCHROME2"
        bits = _integer(ds, "BitsAllocated", 8)
        if bits not in (8, 16, 32):
            return f"BitsAllocated {bits}: a radiograph has 8, 16 or 32"
        if getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) is None:
            return "no TransferSyntaxUID in its file meta information: its pixel data cannot be interpreted"
        return _size_problem(size, max_pixels) or _native_length_problem(ds, size)
    except ValueError as error:
        return str(error)


def _integer(ds: pydicom.Dataset, keyword: str, default: int) -> int:
    value = getattr(ds, keyword, None)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{keyword} {str(value)[:40]!r} is not an integer") from None


def _has_float_pixels(ds: pydicom.Dataset) -> bool:
    return "FloatPixelData" in ds or "DoubleFloatPixelData" in ds


def _native_length_problem(ds: pydicom.Dataset, size: dict) -> str | None:
    """Native (uncompressed) pixel data that is not one frame long (``size``: :func:`declared_size`), read from
    the element's length."""
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return None
    element = ds.get_item(0x7FE00010)  # the raw element: its length, without reading the pixels
    length = getattr(element, "length", None)
    if length is None or length == 0xFFFFFFFF:
        length = len(element.value or b"")
    rows, columns = size["rows"], size["columns"]
    expected = rows * columns * size["bytes_per_sample"]
    if length < expected:
        return f"truncated: its pixel data holds {length} bytes, {rows} x {columns} needs {expected}"
    if length >= 2 * expected and length > expected + 1:  # a pad byte is not a frame (a 1 x 1 8-bit image)
        return (
            f"its pixel data holds {length} bytes, {length // expected} frames of {rows} x {columns}, but the header "
            "declares one (Rows or Columns edited? the data stored twice?)"
        )
    return None


def declared_size(ds: pydicom.Dataset) -> dict[str, int | tuple[int, int] | None]:
    """What ``ds`` says about its pixel data before decoding: ``rows``, ``columns``, ``frames``, ``bytes_per_sample``
    and ``frame_header`` (``(rows, columns)`` from the first compressed frame's own header, or None).

    Raises:
        ValueError: one of these tags is not an integer (naming it).
    """
    return {
        "rows": _integer(ds, "Rows", 0),
        "columns": _integer(ds, "Columns", 0),
        "frames": _integer(ds, "NumberOfFrames", 1) or 1,
        "bytes_per_sample": max(1, (_integer(ds, "BitsAllocated", 8) + 7) // 8),
        "frame_header": _compressed_frame_size(ds),
    }


def size_problem(ds: pydicom.Dataset, max_pixels: int) -> str | None:
    """Why decoding ``ds`` would be unsafe (a declared size over ``max_pixels``, or a compressed frame whose own
    size is not the header's), or None."""
    return _size_problem(declared_size(ds), max_pixels)


def _size_problem(size: dict, max_pixels: int) -> str | None:
    rows, columns, frames = size["rows"], size["columns"], size["frames"]
    if rows <= 0 or columns <= 0:
        return f"declares {rows} x {columns} pixels"
    if rows * columns * frames > max_pixels:
        return f"declares {rows} x {columns} x {frames} pixels, more than the limit of {max_pixels} (max_image_pixels)"
    frame = size["frame_header"]
    if frame is not None:
        frame_rows, frame_columns = frame
        if frame_rows * frame_columns > max_pixels:
            return (
                f"its compressed frame declares {frame_rows} x {frame_columns} pixels, more than the limit of "
                f"{max_pixels} (max_image_pixels)"
            )
        if (frame_rows, frame_columns) != (rows, columns) and frame_rows != 0:
            return f"its compressed frame is {frame_rows} x {frame_columns} pixels, its header says {rows} x {columns}"
    return None


def _compressed_frame_size(ds: pydicom.Dataset) -> tuple[int, int] | None:
    """``(rows, columns)`` from the header of the first frame of encapsulated pixel data: a JPEG / JPEG-LS
    start-of-frame or a JPEG 2000 SIZ marker; None for native pixel data or a codec without such a header."""
    transfer_syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if transfer_syntax is None or not transfer_syntax.is_compressed or "PixelData" not in ds:
        return None
    fragment = _first_fragment(bytes(ds.PixelData[:65536]))
    if fragment is None:
        return None
    if fragment.startswith(b"\xff\x4f\xff\x51"):  # JPEG 2000: SOC, then SIZ
        if len(fragment) < 24:
            return None
        width, height, x_offset, y_offset = struct.unpack(">IIII", fragment[8:24])  # Xsiz, Ysiz, XOsiz, YOsiz
        return height - y_offset, width - x_offset
    if not fragment.startswith(b"\xff\xd8"):
        return None
    position = 2
    while position + 9 <= len(fragment):
        if fragment[position] != 0xFF:
            return None
        marker = fragment[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        (length,) = struct.unpack(">H", fragment[position + 2 : position + 4])
        if marker in _SOF_MARKERS:
            height, width = struct.unpack(">HH", fragment[position + 5 : position + 9])
            return height, width
        position += 2 + length
    return None


def _first_fragment(pixel_data: bytes) -> bytes | None:
    """The first fragment after the basic offset table of encapsulated pixel data (items FFFE,E000)."""
    position, items = 0, []
    while position + 8 <= len(pixel_data) and len(items) < 2:
        tag, length = struct.unpack("<4sI", pixel_data[position : position + 8])
        if tag != b"\xfe\xff\x00\xe0":
            return None
        items.append(pixel_data[position + 8 : position + 8 + length])
        position += 8 + length
    return items[1] if len(items) == 2 else None
