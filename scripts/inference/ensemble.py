"""The network inference runs: one or several checkpoints, with or without flip test-time augmentation.

* :class:`AveragedProbabilities`: checkpoints and/or horizontal-flip TTA averaged as probabilities, as the top SIIM
  solutions did; it returns the logit of the mean probability, so the usual ``sigmoid`` post-processing (and
  everything built on the raw network, like MONAI Label) stays the same. Members with an image-level head
  (``scripts.networks.image_head``) also give the mean of their image probabilities as channel 1; members without
  one count for the mask only.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence

import torch

from scripts.networks.definition import build_network, definition_of, saved_network_config
from scripts.training.checkpoints import load_weights
from scripts.utils.flags import switches

__all__ = ["AveragedProbabilities"]

logger = logging.getLogger(__name__)


class AveragedProbabilities(torch.nn.Module):
    """Average ``sigmoid`` outputs over checkpoints and (optionally) horizontal flips; return their logit.

    Args:
        network_def: the network of the first checkpoint (``inference.json`` builds it from that checkpoint's
            record with ``network_for``); used as it is unless that record names another network.
        checkpoints: paths of state dicts (``models/model.pt``), loaded with ``weights_only=True``. Each is loaded
            into the network its record (``model.json`` beside it, ``scripts.networks.definition``) defines, so the
            members may be different architectures.
        network_config: the network of a later checkpoint that has no record; default a copy of ``network_def``.
        load_now: load the weights when built (inference); False leaves that to :meth:`load_checkpoints`, called
            when the evaluation starts (``LoadBestModel``), so a config can be checked before the weights exist.
        weights: one weight per checkpoint (e.g. from each fold's validation score); default equal. They are
            normalised to sum 1; each member's flipped pass has its member's weight.
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
        network_config: Mapping | None = None,
        weights: Sequence[float] | None = None,
        load_now: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(checkpoints, (str, os.PathLike)):
            checkpoints = [checkpoints]
        if not checkpoints:
            raise ValueError("AveragedProbabilities needs at least one checkpoint")
        self.networks = torch.nn.ModuleList()
        self.checkpoints, self.device = [str(path) for path in checkpoints], device
        for index, path in enumerate(checkpoints):
            network = _member_network(index, path, network_def, network_config)
            self.networks.append(network.to(device, memory_format=memory_format).eval())
        if load_now:
            self.load_checkpoints()
        self.flip_tta = flip_tta
        self.eps = eps
        self.weights = _normalised(weights, len(self.networks))
        logger.info("inference with %d checkpoint(s), flip TTA %s", len(self.networks), "on" if flip_tta else "off")

    def load_checkpoints(self) -> None:
        """Load each checkpoint into its network (``load_weights``: ``weights_only``, errors naming the file)."""
        for network, path in zip(self.networks, self.checkpoints):
            load_weights(network, path, self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.networks) == 1 and not self.flip_tta:
            return self.networks[0](x)
        mask, gate, gate_weight = None, None, 0.0
        # MONAI-loaded radiographs are (cols, rows): the image's left-right axis is spatial dim 0, tensor dim 2.
        views = [(x, None)] + ([(torch.flip(x, dims=(2,)), (2,))] if self.flip_tta else [])
        for network, weight in zip(self.networks, self.weights):
            for view, flipped in views:
                prob = torch.sigmoid(network(view).float())
                prob = torch.flip(prob, dims=flipped) if flipped else prob
                share = weight / len(views)
                mask = prob[:, :1] * share if mask is None else mask + prob[:, :1] * share
                if prob.shape[1] == 2:  # a member with an image head (scripts.networks.image_head): its gate
                    gate = prob[:, 1:] * share if gate is None else gate + prob[:, 1:] * share
                    gate_weight += share
        logits = torch.logit(mask, eps=self.eps)
        if gate is None:
            return logits
        return torch.cat([logits, torch.logit(gate / gate_weight, eps=self.eps)], dim=1)


def _normalised(weights: Sequence[float] | None, count: int) -> list[float]:
    """``weights`` (one per checkpoint, none negative, not all zero) scaled to sum 1; equal ones if None."""
    if weights is None:
        return [1.0 / count] * count
    values = [float(weight) for weight in weights]
    if len(values) != count or any(not 0 <= value < float("inf") for value in values) or not sum(values) > 0:
        raise ValueError(
            f"ensemble_weights {values}: one weight per checkpoint ({count}), none negative, not all zero"
        )
    return [value / sum(values) for value in values]


def _member_network(index: int, path, network_def: torch.nn.Module, network_config: Mapping | None) -> torch.nn.Module:
    """The network checkpoint ``index`` (at ``path``) is loaded into: the one its record defines, else
    ``network_config``'s, else a copy of ``network_def``; the first checkpoint reuses ``network_def`` itself when
    that is the network its record (or the lack of one) asks for."""
    recorded = saved_network_config(path)
    if index == 0 and (recorded is None or recorded == definition_of(network_def)):
        return network_def
    if recorded is not None:
        return build_network(recorded)
    if network_config is not None:
        return build_network(network_config)
    return copy.deepcopy(network_def)
