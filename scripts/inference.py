"""The pieces of ``configs/inference.json`` that MONAI does not have.

* :class:`SafeDataset`: a file that cannot be loaded (corrupt, truncated, pixel-less, RGB) becomes an error record
  instead of stopping the run, so one bad file in a folder of hundreds costs only itself.
* :class:`FolderEvaluator`: a ``SupervisedEvaluator`` that passes error records straight to the handlers.
* :class:`AveragedProbabilities`: several checkpoints and/or horizontal-flip test-time augmentation averaged as
  probabilities, as the top SIIM solutions did; it returns the logit of the mean probability, so the usual
  ``sigmoid`` post-processing (and everything built on the raw network, like MONAI Label) stays the same.
* :func:`load_weights`: ``weights_only=True`` loading of ``models/model.pt``-style state dicts.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from monai.data import Dataset
from monai.engines import SupervisedEvaluator

from scripts.flags import as_flag

__all__ = ["ERROR_KEY", "AveragedProbabilities", "FolderEvaluator", "SafeDataset", "error_reason", "load_weights"]

ERROR_KEY = "error"
PATH_KEY = "image_path"
logger = logging.getLogger(__name__)


def error_reason(error: BaseException) -> str:
    """The innermost cause of ``error`` as ``Type: message`` (MONAI wraps transform errors in RuntimeErrors)."""
    while error.__cause__ is not None:
        error = error.__cause__
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


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
    post-processing, for the handlers (``scripts.inference_writer.InferenceWriter``) to report.
    """

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict) -> dict:
        if isinstance(batchdata, dict) and ERROR_KEY in batchdata:
            engine.state.output = {ERROR_KEY: batchdata[ERROR_KEY], PATH_KEY: batchdata[PATH_KEY]}
            return engine.state.output
        return super()._iteration(engine, batchdata)


def load_weights(network: torch.nn.Module, path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a plain ``state_dict`` (``models/model.pt``) into ``network`` with ``weights_only=True``.

    Raises:
        FileNotFoundError: no file at ``path``, with a hint on where weights come from.
        ValueError: the file is not a state dict of this network.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no weights at {path}: train the bundle first (models/model.pt), or pass --ckpt_dir / --checkpoints"
        )
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path}: not a plain state_dict of tensors (refused by weights_only loading): {error_reason(error)}") from error
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state_dict, got {type(state).__name__}")
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not fit network_def: {error_reason(error)}") from error
    return network


class AveragedProbabilities(torch.nn.Module):
    """Average ``sigmoid`` outputs over checkpoints and (optionally) horizontal flips; return their logit.

    Args:
        network_def: the network architecture; one copy is made per checkpoint.
        checkpoints: paths of state dicts (``models/model.pt``), loaded with ``weights_only=True``.
        flip_tta: also run every network on the left-right flipped input and flip the result back.
        device, memory_format: where and in which layout the networks live.
        eps: clamp of the mean probability before the logit, so that ``sigmoid`` gives it back in float32.

    With one checkpoint and no TTA it is the network itself (its logits pass through unchanged).
    """

    def __init__(
        self,
        network_def: torch.nn.Module,
        checkpoints: Sequence[str | os.PathLike],
        flip_tta: bool = False,
        device: str | torch.device = "cpu",
        memory_format: torch.memory_format = torch.contiguous_format,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if isinstance(checkpoints, (str, os.PathLike)):
            checkpoints = [checkpoints]
        if not checkpoints:
            raise ValueError("AveragedProbabilities needs at least one checkpoint")
        self.networks = torch.nn.ModuleList()
        for path in checkpoints:
            network = load_weights(copy.deepcopy(network_def), path, device)
            self.networks.append(network.to(device, memory_format=memory_format).eval())
        self.flip_tta = as_flag(flip_tta, "tta")
        self.eps = eps
        logger.info("inference with %d checkpoint(s), flip TTA %s", len(self.networks), "on" if flip_tta else "off")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.networks) == 1 and not self.flip_tta:
            return self.networks[0](x)
        total, count = None, 0
        # MONAI-loaded radiographs are (cols, rows): the image's left-right axis is spatial dim 0, tensor dim 2.
        views = [(x, None)] + ([(torch.flip(x, dims=(2,)), (2,))] if self.flip_tta else [])
        for network in self.networks:
            for view, flipped in views:
                prob = torch.sigmoid(network(view).float())
                prob = torch.flip(prob, dims=flipped) if flipped else prob
                total = prob if total is None else total + prob
                count += 1
        return torch.logit(total / count, eps=self.eps)
