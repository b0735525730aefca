"""MONAI Label app serving this bundle: 2-D pneumothorax masks on chest-radiograph DICOMs, labels, retraining.

Started by ``python -m scripts.serving.label_server`` (which prepares the studies folder and the served bundle), never by
hand: the bundle to serve comes in as ``--conf bundle_path <dir>``. Everything about the pipeline comes from the
bundle's own ``configs/inference.json`` and ``configs/train.json``; this file only adapts MONAI Label's generic
bundle tasks to single-frame 2-D DICOMs:

* inference: the prediction is ``(1, cols, rows)``; it is squeezed to ``(cols, rows)`` after ``Restored`` and
  written as a uint8 ``.nii.gz`` (or PNG on request), so the label has the DICOM's rows x columns; on a CPU the
  network runs on the bundle's CPU backend (OpenVINO), as ``inference.json`` runs it;
* training: MONAI Label runs the bundle without its ``initialize`` step; this app runs it (the early-stopping
  handler needs the trainer it sets);
* a DICOMweb server as the datastore (``--studies http://.../dicom-web``): ``pacs_datastore`` lists the CR/DX series,
  serves each as its one DICOM file and stores labels as DICOM SEG (MONAI Label's own datastore is for volumes).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
from monai.transforms import MapTransform
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask
from pacs_datastore import RadiographDicomwebDatastore, served_modalities

from scripts.serving.label_server import MODEL_NAME
from scripts.utils.metadata import bundle_identity

logger = logging.getLogger(__name__)


class SqueezeChanneld(MapTransform):
    """``(1, W, H)`` -> ``(W, H)`` uint8, so that ITK writes a 2-D image, not a one-pixel-thick volume."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            if pred.ndim == 3 and pred.shape[0] == 1:
                pred = pred[0]
            d[key] = (np.asarray(pred.detach().cpu() if hasattr(pred, "detach") else pred) > 0.5).astype(np.uint8)
        return d


class PneumothoraxInfer(BundleInferTask):
    """The bundle's inference config, with 2-D label output (``.nii.gz`` uint8 unless the request asks for PNG)."""

    def __init__(self, path: str, conf: dict[str, str]) -> None:
        super().__init__(path, conf, type=InferType.SEGMENTATION, load_strict=True)

    def _get_network(self, device, data):
        """MONAI Label's network (reloaded when the weights change), on the served bundle's ``backend`` where that
        is a CPU runtime and the device is the CPU (``scripts.inference.onnx_backend``: OpenVINO by default)."""
        from scripts.inference.onnx_backend import ExportedNetwork, check_precision

        network = super()._get_network(device, data)
        backend = self.bundle_config.get_parsed_content("backend") if self.bundle_config.get("backend") else "torch"
        precision = self.bundle_config.get_parsed_content("cpu_precision") if self.bundle_config.get("cpu_precision") else "f32"
        check_precision(backend, precision)  # bf16 on another backend is refused, as by inference.json
        if network is None or backend == "torch" or not str(device).startswith("cpu"):
            return network
        exported = getattr(self, "_exported", None)
        if exported is None or exported[0] is not network:  # built once per network MONAI Label (re)loads
            self._exported = (network, ExportedNetwork(network, self.get_path(), runtime=backend, precision=precision))
        return self._exported[1]

    def post_transforms(self, data=None):
        return [*super().post_transforms(data), SqueezeChanneld(keys=self.key_pred)]

    def writer(self, data: dict[str, Any], extension=None, dtype=None):
        extension = extension or data.get("result_extension") or ".nii.gz"
        if not str(extension).startswith("."):
            extension = f".{extension}"
        return super().writer(data, extension=extension, dtype=dtype or data.get("result_dtype") or "uint8")


class PneumothoraxTrain(BundleTrainTask):
    """The bundle's training config on MONAI Label's datastore items ``{"image": dcm, "label": nii.gz}``."""

    def __init__(self, path: str, conf: dict[str, str]) -> None:
        super().__init__(path, conf, load_strict=True)

    def run_single_gpu(self, request, overrides):
        import monai.bundle

        monai.bundle.run(
            run_id=request.get("run_id", "run"),
            init_id="initialize",
            final_id="finalize",
            meta_file=self.bundle_metadata_path,
            config_file=self.bundle_config_path,
            **overrides,
        )


class PneumothoraxApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.served_bundle = os.path.realpath(conf.get("bundle_path") or os.path.join(app_dir, "..", "runs", "label", "bundle"))
        if not os.path.isfile(os.path.join(self.served_bundle, "models", "model.pt")):
            raise FileNotFoundError(
                f"no weights at {self.served_bundle}/models/model.pt: start the server with scripts.serving.label_server"
            )
        identity = bundle_identity(os.path.join(self.served_bundle, "configs", "metadata.json"))
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=identity.name,
            description="2-D pneumothorax segmentation of chest radiographs (research use only)",
            version=identity.version,
        )

    def init_remote_datastore(self):
        """A DICOMweb server (``--studies http(s)://...``): MONAI Label's client and settings (credentials from
        ``MONAI_LABEL_DICOMWEB_USERNAME`` / ``_PASSWORD``, cache in ``MONAI_LABEL_DICOMWEB_CACHE_PATH``), the
        radiograph datastore; no dcmqi."""
        from dicomweb_client.session_utils import create_session_from_user_pass
        from monailabel.config import settings
        from monailabel.datastore.dicom import DICOMwebClientX

        session = None
        if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
            session = create_session_from_user_pass(settings.MONAI_LABEL_DICOMWEB_USERNAME,
                                                    settings.MONAI_LABEL_DICOMWEB_PASSWORD)  # fmt: skip
        client = DICOMwebClientX(url=self.studies, session=session, qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                                 wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                                 stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX)  # fmt: skip
        bundle_python = os.environ.get("BUNDLE_PYTHON")
        if not bundle_python:
            raise RuntimeError("BUNDLE_PYTHON is not set: start the server with scripts.serving.label_server")
        cache = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip() or None
        return RadiographDicomwebDatastore(client, served_modalities(self.served_bundle), bundle_python, cache)

    def init_infers(self):
        task = PneumothoraxInfer(self.served_bundle, self.conf)
        if not task.is_valid():
            raise RuntimeError(f"MONAI Label cannot serve the bundle at {self.served_bundle}")
        return {MODEL_NAME: task}

    def init_trainers(self):
        return {MODEL_NAME: PneumothoraxTrain(self.served_bundle, self.conf)}

    def init_strategies(self):
        return {"random": Random(), "first": First()}
