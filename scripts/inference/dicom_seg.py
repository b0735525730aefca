"""DICOM Segmentation objects for predicted pneumothoraces, so that a result can go back to a PACS.

One binary SEG per positive image (highdicom), in the source image's study, referencing its series and SOP
instance, with one segment coded SCT 36118008 "Pneumothorax" and the bundle named as the AI algorithm (its name and
version from ``configs/metadata.json``).
highdicom is imported when a SEG is written, so the rest of the bundle also runs where it is not installed
(the MONAI Label environment, with pydicom 2).
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import pydicom

from scripts.utils.files import atomic_open
from scripts.utils.metadata import bundle_identity

__all__ = ["SEGMENT_LABEL", "read_segmentation_mask", "write_segmentation"]

SEGMENT_LABEL = "pneumothorax"
_SERIES_NUMBER = 9901  # a number unlikely to clash with the acquisition's own series
# Type 2 attributes of the patient and study modules that highdicom copies from the source image
_TYPE2_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def write_segmentation(
    path: str | os.PathLike,
    source: pydicom.Dataset,
    mask: np.ndarray,
    algorithm_name: str | None = None,
    algorithm_version: str | None = None,
) -> Path:
    """Write ``mask`` (image orientation ``(rows, cols)``, non-zero = pneumothorax) as a binary DICOM SEG.

    ``source`` is the radiograph's dataset (pixel data not needed). The SEG gets a new series in the source's
    study; it is written atomically. The algorithm is the bundle (:func:`~scripts.utils.metadata.bundle_identity`)
    unless named.

    Raises:
        ValueError: the mask's shape is not the source's ``(Rows, Columns)``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    identity = bundle_identity()
    algorithm_name = algorithm_name or identity.slug
    algorithm_version = algorithm_version or identity.version
    mask = np.asarray(mask)
    expected = (int(source.Rows), int(source.Columns))
    if mask.shape != expected:
        raise ValueError(f"SEG mask shape {mask.shape} differs from the source image's (Rows, Columns) {expected}")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, version=algorithm_version, family=codes.cid7162.ArtificialIntelligence
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Pneumothorax,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    # A projection radiograph has no frame of reference; highdicom would still copy its PixelSpacing into a Pixel
    # Measures sequence without SliceThickness, which highdicom itself then refuses to read back. The SEG is tied
    # to its source pixel for pixel (same Rows x Columns, spatial locations preserved), so it needs no spacing.
    _check_dates_and_times(source)
    source = copy.deepcopy(source)
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in source:
            delattr(source, keyword)
    for keyword in _TYPE2_KEYWORDS:  # required to be present (possibly empty): many exports leave them out
        if keyword not in source:
            setattr(source, keyword, "")
    with warnings.catch_warnings():
        # SIIM-style anonymised files carry a UUID as PatientName, which highdicom warns about on every image
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        seg = _segmentation(hd, source, mask, segment, algorithm_name, algorithm_version)
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        seg.save_as(handle)
    return path


def _segmentation(hd, source, mask, segment, algorithm_name, algorithm_version):
    return hd.seg.Segmentation(
        source_images=[source],
        pixel_array=(mask > 0).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="MONAI bundle",
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version,
        device_serial_number="none",
        series_description="Pneumothorax segmentation (research use only)",
        omit_empty_frames=False,
    )


def read_segmentation_mask(path: str | os.PathLike) -> np.ndarray:
    """The pneumothorax segment of a SEG written by :func:`write_segmentation`, as a ``(rows, cols)`` uint8 0/1."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    source_uid = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source_uid], segment_numbers=[1], combine_segments=True
    )
    return np.asarray(pixels[0], dtype=np.uint8)


#: Date and time attributes highdicom copies from the source: a malformed one is named, not a highdicom traceback.
_DATES = ("StudyDate", "PatientBirthDate", "SeriesDate", "ContentDate")
_TIMES = ("StudyTime", "SeriesTime", "ContentTime")


def _check_dates_and_times(source: pydicom.Dataset) -> None:
    from pydicom.valuerep import DA, TM

    for keywords, kind, form in ((_DATES, DA, "YYYYMMDD"), (_TIMES, TM, "HHMMSS")):
        for keyword in keywords:
            value = source.get(keyword)
            if value in (None, ""):
                continue
            try:
                kind(str(value))
            except (ValueError, TypeError):
                raise ValueError(f"{keyword} {str(value)[:40]!r} of the source is not a DICOM {form} value") from None
