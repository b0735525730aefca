"""The viewer's model: the bundle's own inference pipeline, built once, run on one uploaded DICOM at a time.

:class:`ViewerPipeline` reads ``configs/common.json`` + ``configs/inference.json`` + the ``--override`` files
(merged as the MONAI Label server merges them: ``scripts.serving.label_server.merged_config``) with ``ckpt_dir``
set, and builds what makes the answer at start-up: the network (with its TTA and ensemble), the image gates, the
thresholds and the gate threshold. Each :meth:`ViewerPipeline.predict` then runs the configs' own ``evaluator``
(dataset, preprocessing, inferer, post-processing, ``InferenceWriter``) with ``dataset_dir`` the uploaded file and
``output_dir`` the request's folder, overlays and Grad-CAM heatmaps on. So an upload gets exactly the files
``python -m monai.bundle run ... inference.json`` writes for it (``scripts.serving.viewer_results`` reads them).

The network is one shared object: :meth:`~ViewerPipeline.predict` holds a lock, so one image runs at a time.
"""

from __future__ import annotations

import csv
import logging
import os
import threading
from dataclasses import replace
from pathlib import Path

import pydicom

from scripts.data.reader import file_problem, max_file_bytes, size_problem
from scripts.serving.label_server import merged_config
from scripts.serving.viewer_results import ImageResult, read_result_folder
from scripts.utils.metadata import BUNDLE_ROOT

__all__ = ["RejectedInput", "ViewerPipeline"]

logger = logging.getLogger(__name__)

#: Built once at start-up and kept: the model and its decision rules.
_MODEL_IDS = ("network", "gates", "thresholds", "gate", "image_size")
#: For every request: overlays and heatmaps to show; loading and writing in the request's thread (a worker
#: process per image would cost more than the image).
_VIEWER_SETTINGS = {"write_overlays": True, "write_heatmaps": True, "num_workers": 0, "write_workers": 0}


class RejectedInput(ValueError):
    """An upload the model cannot take; ``status`` is the HTTP status that says why, the message the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class ViewerPipeline:
    """``configs/inference.json`` with ``ckpt_dir`` and ``overrides``, its model built once.

    Args:
        ckpt_dir: the folder of ``model.pt`` (its ``model.json`` and ``thresholds.json`` beside it).
        overrides: config files layered after ``inference.json`` (``configs/demo.json`` for the demo model...).
    """

    def __init__(self, ckpt_dir: str | os.PathLike, overrides: list[str | os.PathLike] = ()) -> None:
        from monai.bundle import ConfigParser

        ckpt_dir = Path(ckpt_dir).resolve()
        if not (ckpt_dir / "model.pt").is_file():
            raise FileNotFoundError(f"--ckpt_dir {ckpt_dir} holds no model.pt (train the bundle first)")
        self.parser = ConfigParser(merged_config("inference.json", [Path(p) for p in overrides]))
        self.parser["bundle_root"] = str(BUNDLE_ROOT)
        self.parser["ckpt_dir"] = str(ckpt_dir)
        for key, value in _VIEWER_SETTINGS.items():
            self.parser[key] = value
        for key in _MODEL_IDS:
            self.parser[key] = self.parser.get_parsed_content(key)
        self.max_pixels = int(self.parser.get_parsed_content("max_image_pixels"))
        self.checkpoints = [str(path) for path in self.parser.get_parsed_content("checkpoints")]
        self.thresholds, self.gate = self.parser["thresholds"], self.parser["gate"]
        self._lock = threading.Lock()
        logger.info("viewer model: %s, thresholds %s, gate %s", ", ".join(self.checkpoints), self.thresholds, self.gate)

    def predict(self, dicom: str | os.PathLike, output_dir: str | os.PathLike) -> ImageResult:
        """Run inference on one DICOM file into ``output_dir`` (a new folder) and return its result.

        Raises:
            RejectedInput: the file is not DICOM (415), declares more pixels than ``max_image_pixels`` (413), or
                cannot be loaded or is not an image the model is for (422); the reason says which, as inference's
                ``errors.csv`` / ``skipped.csv`` would.
        """
        dicom, output_dir = Path(dicom), Path(output_dir)
        self._check(dicom)
        with self._lock:
            self.parser["dataset_dir"] = str(dicom)
            self.parser["output_dir"] = str(output_dir)
            self.parser.get_parsed_content("evaluator").run()
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
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [row["reason"] for row in csv.DictReader(handle)]
