"""MONAI Label's DICOMweb datastore, fitted to chest radiographs: the app uses it when ``--studies`` is a URL.

MONAI Label 0.8.5's ``DICOMWebDatastore`` is built for CT and MR volumes: it lists series of one modality (CT by
default), turns each series into a NIfTI volume, and writes labels as SEG with dcmqi, which it downloads at start-up
and which refuses a projection radiograph (no image position or orientation). This subclass keeps its cache, its
image ids (SeriesInstanceUIDs) and its HTTP client, and changes what does not fit:

* images: the series of every modality the served bundle's input rules admit (``input_rules#modalities``: CR, DX),
  one search per modality; an image is the series' one DICOM file, served as it is (the bundle's reader and
  orientation, exactly as for a local folder). A series of several instances is refused with a clear error;
* labels: a ``final`` label is stored on the server as a DICOM SEG in the image's study, marked MANUAL (a person's
  annotation), by ``scripts.serving.label_seg`` in the bundle's own environment (``$BUNDLE_PYTHON``: highdicom
  needs pydicom 3); the labelled images are those with such a SEG. The SEGs the bundle's inference stores
  (AUTOMATIC) are results, not training data, and are left out;
* training data: each labelled image's SEG is fetched from the server and turned back into a label file.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag
from pydicom import Dataset

from scripts.utils.processes import ends_with_this_process

logger = logging.getLogger(__name__)

#: Segment algorithm types that mark a SEG as a person's label (AUTOMATIC ones are the bundle's results).
LABEL_ALGORITHM_TYPES = ("MANUAL", "SEMIAUTOMATIC")
#: The segment that is a label: segmented property type SCT 36118008 "Pneumothorax" (what the bundle writes).
PNEUMOTHORAX_CODE = ("SCT", "36118008")
#: Seconds a search of the server is reused (the active-learning strategies ask for the lists on every request).
SEARCH_TTL = 30.0


def _value(item: dict, tag: str, default: object = "") -> object:
    """The first value of ``tag`` in a DICOM JSON data set."""
    values = (item or {}).get(tag, {}).get("Value") or [default]
    return values[0]


class RadiographDicomwebDatastore(DICOMWebDatastore):
    """``DICOMWebDatastore`` for single-frame radiographs of ``modalities``; ``bundle_python`` runs the SEG
    conversions (see the module docstring)."""

    def __init__(self, client, modalities: list[str], bundle_python: str, cache_path: str | None = None) -> None:
        self.modalities = [str(m).upper() for m in modalities]
        self.bundle_python = bundle_python
        self._searched: dict[str, tuple[float, list]] = {}
        super().__init__(client, {"Modality": ",".join(self.modalities)}, cache_path=cache_path,
                         fetch_by_frame=False, convert_to_nifti=False)  # fmt: skip

    # -- images -------------------------------------------------------------------------------------------------

    def _cached(self, key: str, search):
        now = time.monotonic()
        if key not in self._searched or now - self._searched[key][0] > SEARCH_TTL:
            self._searched[key] = (now, search())
        return self._searched[key][1]

    def list_images(self) -> list[str]:
        return self._cached("images", self._search_images)

    def _search_images(self) -> list[str]:
        series = []
        for modality in self.modalities:
            for found in self._client.search_for_series(search_filters={"Modality": modality}):
                uid = str(Dataset.from_json(found)["SeriesInstanceUID"].value)
                if uid not in series:
                    series.append(uid)
        return series

    def get_image_uri(self, image_id: str) -> str:
        """The series' one DICOM file, fetched once into the cache."""
        cached = LocalDatastore.get_image_uri(self, image_id)
        if cached and os.path.isfile(cached):
            return cached
        study = self._study_of(image_id)
        instances = self._client.retrieve_series(study, image_id)
        if len(instances) != 1:
            raise ValueError(f"series {image_id} holds {len(instances)} instances; the model segments single "
                             "radiographs (one instance per series)")  # fmt: skip
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, f"{image_id}.dcm")
            instances[0].save_as(path)
            LocalDatastore.add_image(self, image_id, path, {"SeriesInstanceUID": image_id, "StudyInstanceUID": study})
        return LocalDatastore.get_image_uri(self, image_id)

    def _study_of(self, series_id: str) -> str:
        found = self._client.search_for_series(search_filters={"SeriesInstanceUID": series_id})
        matches = [Dataset.from_json(item) for item in found]
        matches = [item for item in matches if str(item.get("SeriesInstanceUID", "")) == series_id]
        if not matches:
            raise ValueError(f"series {series_id} is not on {self._client.base_url}")
        return str(matches[0].StudyInstanceUID)

    # -- labels -------------------------------------------------------------------------------------------------

    def _label_segs(self) -> list[dict[str, str]]:
        return self._cached("labels", self._search_labels)

    def _search_labels(self) -> list[dict[str, str]]:
        """``{"image", "study", "series", "segment"}`` of the newest SEG of each listed image that is a person's
        label of a pneumothorax: a MANUAL or SEMIAUTOMATIC segment coded SCT 36118008 (another tool's lung or
        nodule segment is not a label of this model). Newest by content date and time, then series date and time."""
        images = set(self.list_images())
        newest: dict[str, tuple[tuple, dict]] = {}
        for found in self._client.search_for_series(search_filters={"Modality": "SEG"}):
            seg = Dataset.from_json(found)
            study, series = str(seg.StudyInstanceUID), str(seg.SeriesInstanceUID)
            for meta in self._client.retrieve_series_metadata(study, series):
                referenced = (meta.get("00081115", {}).get("Value") or [{}])[0]  # ReferencedSeriesSequence
                image = str(_value(referenced, "0020000E"))
                segment = _label_segment(meta)
                if image not in images or segment is None:
                    continue
                when = tuple(str(_value(meta, tag)) for tag in ("00080023", "00080033", "00080021", "00080031"))
                if image not in newest or when > newest[image][0]:
                    label = {"image": image, "study": study, "series": series, "segment": str(segment),
                             "sop": str(_value(meta, "00080018"))}  # fmt: skip
                    newest[image] = (when, label)
        return [label for _, label in newest.values()]

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        return sorted({label["image"] for label in self._label_segs()})

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any],
                   label_id: str = "") -> str:  # fmt: skip
        if label_tag == DefaultLabelTag.FINAL:
            image = self.get_image_uri(image_id)
            with tempfile.TemporaryDirectory() as folder:
                seg = os.path.join(folder, "seg.dcm")
                self._convert("to-seg", "--image", image, "--label", label_filename, "--out", seg)
                from pydicom import dcmread

                dataset = dcmread(seg)
                answer = self._client.store_instances([dataset], study_instance_uid=str(dataset.StudyInstanceUID))
                stored = [str(item.get("ReferencedSOPInstanceUID", ""))
                          for item in getattr(answer, "ReferencedSOPSequence", []) or []]  # fmt: skip
                if str(dataset.SOPInstanceUID) not in stored:
                    failed = getattr(answer, "FailedSOPSequence", []) or []
                    reason = failed[0].get("FailureReason", "not given") if failed else "not listed as stored"
                    raise ValueError(f"{self._client.base_url} did not store the label SEG of {image_id} "
                                     f"(failure reason {reason})")  # fmt: skip
                self._searched.pop("labels", None)
                label_info = {**label_info, "SeriesInstanceUID": str(dataset.SeriesInstanceUID),
                              "StudyInstanceUID": str(dataset.StudyInstanceUID)}  # fmt: skip
                logger.info("label of %s stored as SEG %s", image_id, dataset.SOPInstanceUID)
        return LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)

    def _download_labeled_data(self) -> None:
        """Fetch each labelled image and its latest label SEG, as a label file in the local cache."""
        for label in self._label_segs():
            self.get_image_uri(label["image"])
            instance = self._client.retrieve_instance(label["study"], label["series"], label["sop"])
            with tempfile.TemporaryDirectory() as folder:
                seg, target = os.path.join(folder, "seg.dcm"), os.path.join(folder, f"{label['image']}.nii.gz")
                instance.save_as(seg)
                self._convert("to-label", "--seg", seg, "--segment", label["segment"], "--out", target)
                LocalDatastore.save_label(self, label["image"], target, DefaultLabelTag.FINAL,
                                          {"SeriesInstanceUID": label["series"], "StudyInstanceUID": label["study"]})  # fmt: skip
            logger.info("training label of %s read from SEG series %s", label["image"], label["series"])

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """The label file in the local cache (a saved label, or one read from its SEG for training)."""
        return LocalDatastore.get_label_uri(self, label_id, label_tag)

    def _convert(self, *arguments: str) -> None:
        """``python -m scripts.serving.label_seg ...`` in the bundle's environment; its error becomes ours."""
        command = [self.bundle_python, "-m", "scripts.serving.label_seg", *arguments]
        environment = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
        result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600,
                                preexec_fn=ends_with_this_process())  # fmt: skip
        if result.returncode != 0:
            raise ValueError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else
                             f"{' '.join(command)} failed ({result.returncode})")  # fmt: skip


def _label_segment(meta: dict) -> int | None:
    """The number of the segment of a SEG's metadata that is a person's pneumothorax label, or None."""
    for item in meta.get("00620002", {}).get("Value") or []:  # SegmentSequence
        kind = str(_value(item, "00620008")).upper()  # SegmentAlgorithmType
        code = (item.get("0062000F", {}).get("Value") or [{}])[0]  # SegmentedPropertyTypeCodeSequence
        designator = str(_value(code, "00080102")).upper()  # CodingSchemeDesignator
        if kind in LABEL_ALGORITHM_TYPES and (designator, str(_value(code, "00080100"))) == PNEUMOTHORAX_CODE:
            return int(_value(item, "00620004", 1))  # SegmentNumber
    return None


def served_modalities(bundle: str | os.PathLike) -> list[str]:
    """The modalities the served bundle's input rules admit (``configs/inference.json``, ``input_rules``)."""
    config = json.loads((Path(bundle) / "configs" / "inference.json").read_text())
    return list(config.get("input_rules", {}).get("modalities") or ["CR", "DX"])
