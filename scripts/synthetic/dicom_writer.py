"""Writing SIIM-style DICOM radiographs: Secondary Capture files shaped like the challenge's (the generator and the
tests write them; the pipeline only reads, with ``scripts.data.reader``)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage

from scripts.utils.files import atomic_open

__all__ = ["write_radiograph"]


def write_radiograph(
    path: str | os.PathLike,
    pixels: np.ndarray,
    *,
    sop_instance_uid: str,
    study_instance_uid: str,
    series_instance_uid: str,
    patient_id: str = "anonymous",
    patient_age: int | None = None,
    patient_sex: str | None = None,
    view_position: str = "PA",
    pixel_spacing: float = 0.168,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    jpeg_quality: int | None = 95,
) -> Path:
    """Write a chest radiograph as a Secondary Capture DICOM file shaped like the SIIM-ACR ones.

    Args:
        pixels: ``(rows, cols)`` uint8 or uint16 array in image orientation (as ``pixel_array`` will return it).
        photometric: ``MONOCHROME2`` (SIIM) or ``MONOCHROME1`` (inverted, as some other sources ship).
        bits_stored: defaults to the dtype's width.
        jpeg_quality: JPEG Baseline (lossy, transfer syntax 1.2.840.10008.1.2.4.50, as SIIM) at this quality for
            8-bit images; ``None`` writes uncompressed Explicit VR Little Endian.

    The file is written to a temporary name and renamed, so an interrupted run never leaves half a file.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_radiograph needs a 2-D uint8/uint16 array, got {pixels.dtype} {pixels.shape}")
    bits_allocated = pixels.dtype.itemsize * 8
    bits_stored = bits_allocated if bits_stored is None else int(bits_stored)
    if not 1 <= bits_stored <= bits_allocated or int(pixels.max(initial=0)) >= 2**bits_stored:
        raise ValueError(f"write_radiograph: values do not fit in BitsStored={bits_stored}")
    compress = jpeg_quality is not None and bits_allocated == 8

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = JPEGBaseline8Bit if compress else ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = "19010101"
    ds.StudyTime = "000000.00"
    ds.AccessionNumber = ""
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"view: {view_position}"
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    if patient_sex is not None:
        ds.PatientSex = patient_sex
    if patient_age is not None:
        # SIIM files carry a bare number ('38'), not the standard's '038Y': keep the real, non-conforming form.
        with pydicom.config.disable_value_validation():
            ds.PatientAge = str(int(patient_age))
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view_position
    ds.StudyInstanceUID = study_instance_uid
    ds.SeriesInstanceUID = series_instance_uid
    ds.StudyID = ""
    ds.SeriesNumber = "1"
    ds.InstanceNumber = "1"
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.PixelSpacing = [f"{pixel_spacing:g}", f"{pixel_spacing:g}"]
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if compress:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.PixelData = encapsulate([_jpeg_baseline(pixels, jpeg_quality)])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"

    path = Path(path)
    with atomic_open(path, "wb") as handle:
        # pydicom 3 takes enforce_file_format; pydicom 2.x (MONAI Label's venv) takes write_like_original.
        try:
            pydicom.dcmwrite(handle, ds, enforce_file_format=True)
        except TypeError:
            ds.is_little_endian, ds.is_implicit_VR = True, False
            pydicom.dcmwrite(handle, ds, write_like_original=False)
    return path


def _jpeg_baseline(pixels: np.ndarray, quality: int) -> bytes:
    """One greyscale JPEG Baseline (8-bit, Huffman, non-progressive) codestream."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=int(quality), optimize=False, progressive=False)
    return buffer.getvalue()
