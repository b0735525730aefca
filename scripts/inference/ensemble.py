"""The network inference runs: one or several checkpoints, with or without flip test-time augmentation.

* :class:`AveragedProbabilities`: checkpoints and/or horizontal-flip TTA averaged as probabilities, as the top SIIM
  solutions did; it returns the logit of the mean probability, so the usual ``sigmoid`` post-processing (and
  everything built on the raw network, like MONAI Label) stays the same.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch

from scripts.networks.definition import network_for
from scripts.training.checkpoints import load_weights
from scripts.utils.flags import switches

__all__ = ["AveragedProbabilities"]

logger = logging.getLogger(__name__)


class AveragedProbabilities(torch.nn.Module):
    """Average ``sigmoid`` outputs over checkpoints and (optionally) horizontal flips; return their logit.

    Args:
        network_def: the network of a checkpoint that has no record of its own (``models/model.json`` with the
            network's definition, ``scripts.networks.definition``); a checkpoint with one gets the network it
            records, so the members may be different architectures.
        checkpoints: paths of state dicts (``models/model.pt``), loaded with ``weights_only=True``.
        flip_tta: also run every network on the left-right flipped input and flip the result back.
        device, memory_format: where and in which layout the networks live.
        eps: clamp of the mean probability before the logit, so that ``sigmoid`` gives it back in float32.

    With one checkpoint and no TTA it is the network itself (its logits pass through unchanged).
    """

    @switches(flip_tta="tta")
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
            network = load_weights(network_for(path, network_def), path, device)
            self.networks.append(network.to(device, memory_format=memory_format).eval())
        self.flip_tta = flip_tta
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
