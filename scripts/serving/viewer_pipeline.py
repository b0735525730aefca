"""The viewer's model: the bundle's own inference pipeline (``scripts.serving.bundle_inference``), built once at
start-up, run on one uploaded DICOM at a time.

Each :meth:`ViewerPipeline.predict` runs the configs' own ``evaluator`` with ``dataset_dir`` the uploaded file and
``output_dir`` the request's folder, overlays and Grad-CAM heatmaps on. So an upload gets exactly the files
``python -m monai.bundle run ... inference.json`` writes for it (``scripts.serving.viewer_results`` reads them).
The network is one shared object: one image runs at a time.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pydicom

from scripts.data.reader import file_problem, max_file_bytes, size_problem
from scripts.serving.bundle_inference import BundleInference
from scripts.serving.viewer_results import ImageResult, read_result_folder
from scripts.utils.files import read_reasons_csv

__all__ = ["RejectedInput", "ViewerPipeline"]


#: For every request: overlays and heatmaps to show; loading and writing in the request's thread (a worker
#: process per image would cost more than the image).
_VIEWER_SETTINGS = {"write_overlays": True, "write_heatmaps": True, "num_workers": 0, "write_workers": 0}


class RejectedInput(ValueError):
    """An upload the model cannot take; ``status`` is the HTTP status that says why, the message the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class ViewerPipeline(BundleInference):
    """``configs/inference.json`` with ``ckpt_dir`` and ``overrides``, its model built once, overlays and heatmaps on.

    Args:
        ckpt_dir: the folder of ``model.pt`` (its ``model.json`` and ``thresholds.json`` beside it).
        overrides: config files layered after ``inference.json`` (``configs/demo.json`` for the demo model...).
    """

    def __init__(self, ckpt_dir: str | os.PathLike, overrides: list[str | os.PathLike] = ()) -> None:
        super().__init__(ckpt_dir, overrides, _VIEWER_SETTINGS)

    def predict(self, dicom: str | os.PathLike, output_dir: str | os.PathLike) -> ImageResult:
        """Run inference on one DICOM file into ``output_dir`` (a new folder) and return its result.

        Raises:
            RejectedInput: the file is not DICOM (415), declares more pixels than ``max_image_pixels`` (413), or
                cannot be loaded or is not an image the model is for (422); the reason says which, as inference's
                ``errors.csv`` / ``skipped.csv`` would.
        """
        dicom, output_dir = Path(dicom), Path(output_dir)
        self._check(dicom)
        self.run(dicom, output_dir)
        results = read_result_folder(output_dir)
        if not results:  # lost: loading failed, or the input rules left it out
            reasons = _reasons(output_dir / "skipped.csv") + _reasons(output_dir / "errors.csv")
            raise RejectedInput(422, "; ".join(reasons) or "inference gave no result")
        return replace(results[0], problems=tuple(_reasons(output_dir / "errors.csv")))

    def _check(self, dicom: Path) -> None:
        """What is wrong with the file before the pipeline runs, where it has a status of its own: not DICOM at all,
        or an image larger than the pipeline takes (the reader's checks; the pipeline repeats them)."""
        problem = file_problem(dicom, max_bytes=max_file_bytes(self.max_pixels))
        if problem:
            raise RejectedInput(415, problem)
        try:
            header = pydicom.dcmread(dicom, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            raise RejectedInput(
                415, "not a DICOM file: no DICOM header (the 'DICM' marker and file meta information)"
            ) from None
        except Exception as error:
            raise RejectedInput(415, f"not a DICOM file: its header cannot be read ({error})") from None
        try:
            problem = size_problem(header, self.max_pixels)
        except ValueError:  # a size tag that is not a number: the reader says so, as a load error
            problem = None
        if problem:
            raise RejectedInput(413, problem)


def _reasons(path: Path) -> list[str]:
    """The reasons of a ``file,reason`` CSV (``scripts.utils.files.write_reasons_csv``), if it exists."""
    return [reason for _, reason in read_reasons_csv(path)]
