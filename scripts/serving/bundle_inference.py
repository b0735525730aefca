"""The bundle's inference pipeline, built once and run on one file or folder at a time, for the services.

:class:`BundleInference` reads ``configs/common.json`` + ``configs/inference.json`` + the ``--override`` files
(merged as the MONAI Label server merges them: ``scripts.serving.label_server.merged_config``) with ``ckpt_dir``
set, and builds what makes the answer once: the network (with its TTA and ensemble), the image gates, the
thresholds and the gate threshold. Each :meth:`BundleInference.run` then runs the configs' own ``evaluator``
(dataset, preprocessing, inferer, post-processing, ``InferenceWriter``) with ``dataset_dir`` and ``output_dir``
set, so that it writes exactly what ``python -m monai.bundle run ... inference.json`` writes for those inputs.
The web viewer (``scripts.serving.viewer_pipeline``) and the DICOMweb poller (``scripts.serving.dicomweb``) use it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from scripts.serving.label_server import merged_config
from scripts.utils.metadata import BUNDLE_ROOT

__all__ = ["BundleInference"]

logger = logging.getLogger(__name__)

#: Built once and kept: the model and its decision rules.
_MODEL_IDS = ("network", "inference_network", "gates", "thresholds", "gate", "image_size")


class BundleInference:
    """``configs/inference.json`` with ``ckpt_dir``, ``overrides`` and ``settings``, its model built once.

    Args:
        ckpt_dir: the folder of ``model.pt`` (its ``model.json`` and ``thresholds.json`` beside it).
        overrides: config files layered after ``inference.json`` (``configs/demo.json`` for the demo model...).
        settings: config ids set after them (``{"write_overlays": True}``...).

    :meth:`run` holds a lock: the network is one shared object, so one run goes at a time.
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        overrides: Sequence[str | os.PathLike] = (),
        settings: Mapping[str, object] | None = None,
    ) -> None:
        from monai.bundle import ConfigParser

        ckpt_dir = Path(ckpt_dir).resolve()
        if not (ckpt_dir / "model.pt").is_file():
            raise FileNotFoundError(f"--ckpt_dir {ckpt_dir} holds no model.pt (train the bundle first)")
        self.parser = ConfigParser(merged_config("inference.json", [Path(p) for p in overrides]))
        self.parser["bundle_root"] = str(BUNDLE_ROOT)
        self.parser["ckpt_dir"] = str(ckpt_dir)
        for key, value in (settings or {}).items():
            self.parser[key] = value
        for key in _MODEL_IDS:
            self.parser[key] = self.parser.get_parsed_content(key)
        self.max_pixels = int(self.parser.get_parsed_content("max_image_pixels"))
        self.checkpoints = [str(path) for path in self.parser.get_parsed_content("checkpoints")]
        self.thresholds, self.gate = self.parser["thresholds"], self.parser["gate"]
        self._lock = threading.Lock()
        logger.info("model: %s, thresholds %s, gate %s", ", ".join(self.checkpoints), self.thresholds, self.gate)

    def run(self, dataset_dir: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
        """Run inference on ``dataset_dir`` (a DICOM file or a folder of them) into ``output_dir``; returns it."""
        with self._lock:
            self.parser["dataset_dir"] = str(dataset_dir)
            self.parser["output_dir"] = str(output_dir)
            self.parser.get_parsed_content("evaluator").run()
        return Path(output_dir)
