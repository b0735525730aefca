"""Only what the model is for: frontal chest radiographs, selected by their DICOM header before the model runs.

As MONAI Deploy's series selector does, the header decides: by default Modality CR or DX, a frontal view
(ViewPosition PA or AP, or absent), body part chest (or absent), one frame, grey scale. Anything else (a lateral
view, a CT slice, an ultrasound clip) is skipped with its reason in ``skipped.csv`` instead of being segmented as
if it were a chest radiograph. The rules are ``input_rules`` in ``configs/inference.json``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import pydicom
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["NotSelected", "SelectRadiographd", "selection_problem"]

_TAGS = ["Modality", "ViewPosition", "BodyPartExamined", "NumberOfFrames", "SamplesPerPixel"]


class NotSelected(Exception):
    """An input the rules leave out; the message is the reason."""


def selection_problem(
    header: pydicom.Dataset,
    modalities: Sequence[str],
    view_positions: Sequence[str],
    body_parts: Sequence[str],
    max_frames: int = 1,
) -> str | None:
    """Why ``header`` is not an input the model is for, or None. Values compare case-insensitively; an empty
    string in a list admits an absent or empty tag."""

    def allowed(keyword: str, values: Sequence[str]) -> str | None:
        value = str(getattr(header, keyword, "") or "").strip()
        if value.upper() in {v.upper() for v in values}:
            return None
        shown = ", ".join(v or "absent" for v in values)
        return f"{keyword} {value or 'absent'} (the model is for {shown})"

    problems = [
        allowed("Modality", modalities),
        allowed("ViewPosition", view_positions),
        allowed("BodyPartExamined", body_parts),
    ]
    frames = int(getattr(header, "NumberOfFrames", 1) or 1)
    if frames > max_frames:
        problems.append(f"{frames} frames (the model is for single images)")
    samples = int(getattr(header, "SamplesPerPixel", 1) or 1)
    if samples != 1:
        problems.append(f"{samples} samples per pixel (the model is for grey-scale images)")
    found = [problem for problem in problems if problem]
    return "; ".join(found) if found else None


class SelectRadiographd(MapTransform):
    """Raise :class:`NotSelected` for an input whose header the rules leave out (see :func:`selection_problem`).

    Only the few tags needed are read. A file whose header cannot be read passes, so that the reader reports what is
    wrong with it as an error.
    """

    def __init__(
        self,
        keys: KeysCollection,
        modalities: Sequence[str] = ("CR", "DX"),
        view_positions: Sequence[str] = ("PA", "AP", ""),
        body_parts: Sequence[str] = ("CHEST", "THORAX", ""),
        max_frames: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.rules = {
            "modalities": tuple(modalities),
            "view_positions": tuple(view_positions),
            "body_parts": tuple(body_parts),
            "max_frames": int(max_frames),
        }

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                header = pydicom.dcmread(d[key], stop_before_pixels=True, specific_tags=_TAGS)
            except Exception:  # not readable: the reader says why, as an error
                continue
            problem = selection_problem(header, **self.rules)
            if problem:
                raise NotSelected(problem)
        return d
