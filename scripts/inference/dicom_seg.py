"""DICOM Segmentation objects for predicted pneumothoraces, so that a result can go back to a PACS.

One binary SEG per positive image (highdicom), in the source image's study, referencing its series and SOP
instance, with one segment coded SCT 36118008 "Pneumothorax" and the bundle named as the AI algorithm (its name and
version from ``configs/metadata.json``).
The patient and study attributes the SEG takes from its source keep the source's stored bytes, so that a PACS files it
under the same patient even when a name is not valid text in its declared character set (such names are reported,
never re-encoded with replacement characters).
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
from pydicom.dataelem import DataElement

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
    description: str | None = None,
    manual: bool = False,
) -> list[str]:
    """Write ``mask`` (image orientation ``(rows, cols)``, non-zero = pneumothorax) as a binary DICOM SEG.

    ``manual``: the mask is a person's annotation (a label saved through MONAI Label): segment algorithm type MANUAL,
    no algorithm named, series "Pneumothorax annotation". Otherwise it is the bundle's prediction: AUTOMATIC, the
    bundle named as the algorithm.

    ``description`` becomes the segment's Segment Description (0062,0006), e.g. the image-level probability
    inference puts there (at most 64 characters, the attribute's LO limit).

    ``source`` is the radiograph's dataset (pixel data not needed). The SEG gets a new series in the source's
    study; it is written atomically. The algorithm is the bundle (:func:`~scripts.utils.metadata.bundle_identity`)
    unless named.

    Returns the problems of the source that the SEG carries unchanged: the attributes it copies whose stored text is
    not valid in the source's declared character set (:func:`stored_text_problems`).

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
    kind = hd.seg.SegmentAlgorithmTypeValues.MANUAL if manual else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Pneumothorax,
        algorithm_type=kind,
        algorithm_identification=None if manual else algorithm,
    )
    if description:
        if len(description) > 64 or "\\" in description:
            raise ValueError(f"segment description {description!r}: at most 64 characters, no backslash")
        segment.SegmentDescription = description
    # A projection radiograph has no frame of reference; highdicom would still copy its PixelSpacing into a Pixel
    # Measures sequence without SliceThickness, which highdicom itself then refuses to read back. The SEG is tied
    # to its source pixel for pixel (same Rows x Columns, spatial locations preserved), so it needs no spacing.
    missing = [keyword for keyword in _REFERENCED_UIDS if not str(source.get(keyword, "") or "").strip()]
    if missing:
        raise ValueError(f"the source has no {', '.join(missing)}: a SEG must reference its image, series and study")
    _check_dates_and_times(source)
    character_set = _character_set_terms(source)
    stored = _stored_text(source)  # before anything decodes it
    original = source
    source = copy.deepcopy(source)
    if character_set and not character_set[0]:
        source.SpecificCharacterSet = ["ISO 2022 IR 6", *character_set[1:]]
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in source:
            delattr(source, keyword)
    for keyword in _TYPE2_KEYWORDS:  # required to be present (possibly empty): many exports leave them out
        if keyword not in source:
            setattr(source, keyword, "")
    with warnings.catch_warnings():
        # SIIM-style anonymised files carry a UUID as PatientName, which highdicom warns about on every image
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        # text invalid in its character set is reported below, by attribute, rather than warned about by pydicom
        warnings.filterwarnings("ignore", message="Failed to decode byte string")
        seg = _segmentation(hd, source, mask, segment, algorithm_name, algorithm_version, manual)
        copied = _keep_stored_text(seg, original, stored)
    if character_set:
        seg.SpecificCharacterSet = character_set if len(character_set) > 1 else character_set[0]
    with atomic_open(Path(path), "wb") as handle:
        seg.save_as(handle)
    return stored_text_problems(character_set, {tag: stored[tag] for tag in copied})


def _segmentation(hd, source, mask, segment, algorithm_name, algorithm_version, manual=False):
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
        series_description="Pneumothorax annotation" if manual else "Pneumothorax segmentation (research use only)",
        omit_empty_frames=False,
    )


def read_segmentation_mask(path: str | os.PathLike, segment_number: int = 1) -> np.ndarray:
    """Segment ``segment_number`` (the pneumothorax of a SEG written by :func:`write_segmentation`) of a SEG of one
    image, as a ``(rows, cols)`` uint8 0/1."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    source_uid = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source_uid], segment_numbers=[int(segment_number)], combine_segments=True
    )
    return np.asarray(pixels[0], dtype=np.uint8)


#: What a SEG references its source by.
_REFERENCED_UIDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
#: Date and time attributes highdicom copies from the source: a malformed one is named, not a highdicom traceback.
_DATES = ("StudyDate", "PatientBirthDate", "SeriesDate", "ContentDate")
_TIMES = ("StudyTime", "SeriesTime", "ContentTime")


def _character_set_terms(source: pydicom.Dataset) -> list[str]:
    """The source's Specific Character Set as a list of defined terms ([] for the default repertoire), each one that
    highdicom (hence the SEG) accepts.

    Raises:
        ValueError: a term DICOM does not define.
    """
    from highdicom.enum import SpecificCharacterSetValues

    declared = source.get("SpecificCharacterSet")
    terms = [declared] if isinstance(declared, str) else list(declared or [])
    terms = [str(term).strip() for term in terms]
    if not any(terms):
        return []
    defined = {value.value for value in SpecificCharacterSetValues}
    # an empty first term is the default repertoire with code extensions (as in "\\ISO 2022 IR 87"), which DICOM
    # also spells "ISO 2022 IR 6" and the only spelling highdicom takes
    unknown = [term for position, term in enumerate(terms) if term not in defined and (term or position)]
    if unknown:
        shown = "\\".join(terms)[:60]
        raise ValueError(
            f"SpecificCharacterSet {shown!r} of the source is not a DICOM character set "
            f"({unknown[0]!r} is not a defined term)"
        )
    return terms


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


#: Value representations whose stored bytes depend on the Specific Character Set (PS3.5 6.1.2.3)
_CHARSET_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})
_ESCAPE = 0x1B


def _stored_text(dataset: pydicom.Dataset) -> dict:
    """The dataset's top-level public text attributes as stored in the file: ``{tag: (vr, bytes)}``."""
    from pydicom.datadict import dictionary_VR

    stored = {}
    for tag in dataset.keys():
        element = dataset.get_item(tag)
        if tag.is_private or element is None:
            continue
        value = element.value
        if not isinstance(value, bytes):  # already decoded: a person name still knows its bytes
            value = getattr(value, "original_string", None)
        try:
            vr = element.VR or dictionary_VR(tag)
        except KeyError:
            continue
        if vr in _CHARSET_VRS and isinstance(value, bytes):
            stored[tag] = (vr, value)
    return stored


def _keep_stored_text(seg: pydicom.Dataset, source: pydicom.Dataset, stored: dict) -> list:
    """Give the attributes ``seg`` took from ``source`` (same tag, same decoded value) the source's stored bytes;
    return their tags."""
    copied = []
    for tag, (vr, value) in stored.items():
        if tag in seg and seg[tag].VR == vr and seg[tag].value == source[tag].value:
            seg[tag] = DataElement(tag, vr, value)
            copied.append(tag)
    return copied


def stored_text_problems(character_set: list[str], stored: dict) -> list[str]:
    """One reason per attribute of ``stored`` (``{tag: (vr, bytes)}``) whose bytes are not valid text in the
    declared Specific Character Set, given as its list of defined terms (``[]``: the default repertoire, ASCII)."""
    from pydicom import config
    from pydicom.charset import convert_encodings, decode_bytes
    from pydicom.datadict import keyword_for_tag
    from pydicom.valuerep import TEXT_VR_DELIMS

    if character_set:
        named = "declared character set '" + "\\".join(character_set) + "'"
        encodings = convert_encodings(character_set)
        if character_set[0] in ("", "ISO 2022 IR 6"):  # pydicom would read this ASCII repertoire as Latin-1
            encodings[0] = "ascii"
    else:
        named, encodings = "default character repertoire (ASCII)", ["ascii"]
    problems = []
    for tag, (_, value) in stored.items():
        if value.isascii() and _ESCAPE not in value:
            continue  # valid in every DICOM character set
        try:
            with config.strict_reading():
                decode_bytes(value, encodings, TEXT_VR_DELIMS)
        except (UnicodeError, ValueError):
            keyword = keyword_for_tag(tag)
            problems.append(f"{keyword} is not valid text in its {named}; the SEG keeps its bytes unchanged")
    return problems
