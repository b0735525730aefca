"""The engine of ``configs/inference.json``: a dataset and an evaluator for which one bad file costs only itself.

* :class:`SafeDataset`: a file that cannot be loaded (corrupt, truncated, pixel-less, RGB) becomes an error record
  instead of stopping the run.
* :class:`FolderEvaluator`: a ``SupervisedEvaluator`` that passes error records straight to the handlers
  (``scripts.inference.writer.InferenceWriter`` lists them in ``errors.csv``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from monai.data import Dataset
from monai.engines import SupervisedEvaluator

from scripts.utils.errors import error_reason

__all__ = ["ERROR_KEY", "PATH_KEY", "FolderEvaluator", "SafeDataset"]

ERROR_KEY = "error"
PATH_KEY = "image_path"
logger = logging.getLogger(__name__)


class SafeDataset(Dataset):
    """A MONAI ``Dataset`` whose items that fail in ``transform`` become ``{"error": reason, "image_path": path}``.

    Use it with ``batch_size=1`` (full-resolution radiographs differ in size anyway) and :class:`FolderEvaluator`.
    """

    def __init__(self, data: Sequence[dict], transform: Callable | None = None, image_key: str = "image") -> None:
        super().__init__(data=data, transform=transform)
        self.image_key = image_key

    def _transform(self, index: int):
        try:
            return super()._transform(index)
        except Exception as error:  # any failure of one file must not stop the others
            path = str(self.data[index].get(self.image_key, "?"))
            reason = error_reason(error)
            logger.warning("cannot load %s: %s", path, reason)
            return {ERROR_KEY: reason, PATH_KEY: path}


class FolderEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` that skips the network for :class:`SafeDataset` error records.

    An error batch becomes the engine output as it is (``{"error": [...], "image_path": [...]}``), without
    post-processing, for the handlers (``scripts.inference.writer.InferenceWriter``) to report.
    """

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict) -> dict:
        if isinstance(batchdata, dict) and ERROR_KEY in batchdata:
            engine.state.output = {ERROR_KEY: batchdata[ERROR_KEY], PATH_KEY: batchdata[PATH_KEY]}
            return engine.state.output
        return super()._iteration(engine, batchdata)
