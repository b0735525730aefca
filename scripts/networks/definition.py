"""A network is defined once, as plain data, and that definition is saved beside the weights it was trained with.

A definition is a JSON object: ``{"target": <a MONAI network name or a dotted path>, <its arguments>...}``, e.g.
``{"target": "AttentionUnet", "spatial_dims": 2, "in_channels": 1, ...}``. ``configs/common.json`` holds it as
``network_config`` (override it per argument, ``--network_config#channels "[16,32,64]"``, or swap it for a whole
file of ``configs/networks/``), and ``network_def`` is built from it. Training writes it into ``models/model.json``
beside ``models/model.pt``, so evaluation, inference, export and the MONAI Label app build the network from the
checkpoint's own record (:func:`network_for`): an override given at training time needs no repeating, and the
members of an ensemble may be different networks.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = [
    "ENCODER_WEIGHTS",
    "RECORD_KEY",
    "build_network",
    "load_encoder_weights",
    "network_for",
    "record_path",
    "recorded_definition",
    "saved_network_config",
]

logger = logging.getLogger(__name__)

#: The key of the network definition in a checkpoint's record (``model.json``).
RECORD_KEY = "network"
#: The definition key naming a saved encoder state dict to start from.
ENCODER_WEIGHTS = "encoder_weights"


def build_network(config: Mapping) -> torch.nn.Module:
    """The network ``config`` defines (``target`` found as MONAI's bundle configs find a ``_target_``).

    ``encoder_weights`` (a path) is not an argument of the network: after building, that state dict is loaded into
    the network's ``encoder`` (``FlexibleUNet``'s), which is how pretrained encoders reach offline machines
    (:func:`load_encoder_weights`).

    Raises:
        ValueError: ``config`` is not a definition (no ``target``), or the target cannot be built with these
            arguments (the message says which).
    """
    from monai.bundle import ConfigParser

    import scripts.networks.encoders  # noqa: F401  (registers the FlexibleUNet backbones MONAI lacks)

    if not isinstance(config, Mapping) or not isinstance(config.get("target"), str):
        raise ValueError(f"a network definition is an object with a 'target' name, got {str(config)[:200]}")
    arguments = copy.deepcopy({key: value for key, value in config.items() if key not in ("target", ENCODER_WEIGHTS)})
    parser = ConfigParser({"network": {"_target_": config["target"], **arguments}})
    try:
        network = parser.get_parsed_content("network")
    except Exception as error:
        cause = error.__cause__ or error
        raise ValueError(f"network {config['target']} cannot be built from its definition: {cause}") from error
    if config.get(ENCODER_WEIGHTS):
        load_encoder_weights(network, config[ENCODER_WEIGHTS])
    return network


def load_encoder_weights(network: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load a saved encoder state dict (``weights_only``; e.g. torchvision's ImageNet ``resnet34``) into
    ``network.encoder``.

    Keys the encoder lacks (a classifier's ``fc.*``) are left out. A first convolution saved for 3 input channels
    (RGB) goes into a 1-channel encoder summed over its channels, the usual way grey images use colour weights.

    Raises:
        ValueError: the network has no ``encoder``, the file cannot be read, or it leaves encoder weights unset or
            of another shape (naming the first such key).
    """
    encoder = getattr(network, "encoder", None)
    if not isinstance(encoder, torch.nn.Module):
        raise ValueError(f"encoder_weights {path}: {type(network).__name__} has no encoder to load them into")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = f"{type(error).__name__}: {error}"
        raise ValueError(f"encoder_weights {path}: cannot be read as a state dict ({reason})") from None
    expected = encoder.state_dict()
    state = {}
    for key, tensor in expected.items():
        if key not in saved:
            raise ValueError(f"encoder_weights {path}: no {key}, which the {type(encoder).__name__} needs")
        value = saved[key]
        rgb_for_grey = value.ndim == tensor.ndim > 2 and value.shape[1] == 3 and tensor.shape[1] == 1
        if rgb_for_grey and value.shape[0] == tensor.shape[0]:
            value = value.sum(dim=1, keepdim=True)  # RGB weights for a grey image
        if tuple(value.shape) != tuple(tensor.shape):
            raise ValueError(
                f"encoder_weights {path}: {key} is {tuple(value.shape)}, the encoder's {tuple(tensor.shape)}"
            )
        state[key] = value
    encoder.load_state_dict(state)
    logger.info("encoder weights loaded from %s (%d tensors)", path, len(state))
    return network


def recorded_definition(config: Mapping) -> dict:
    """``config`` as a checkpoint records it: without what only initialises (``encoder_weights``, ``pretrained``),
    since the checkpoint's own weights replace those, and the file need not exist where the checkpoint is used."""
    recorded = {key: value for key, value in config.items() if key != ENCODER_WEIGHTS}
    if recorded.get("pretrained"):
        recorded["pretrained"] = False
    return recorded


def record_path(checkpoint: str | os.PathLike) -> Path:
    """Where a checkpoint's record is: ``models/model.pt`` -> ``models/model.json``."""
    return Path(checkpoint).with_suffix(".json")


def saved_network_config(checkpoint: str | os.PathLike) -> dict | None:
    """The network definition recorded beside ``checkpoint``, or None (no record, or an older one without it).

    Raises:
        ValueError: the record exists but is not readable JSON (naming it).
    """
    path = record_path(checkpoint)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: the record of {Path(checkpoint).name} is not readable JSON ({error})") from None
    config = record.get(RECORD_KEY) if isinstance(record, dict) else None
    return config if isinstance(config, dict) else None


def network_for(checkpoint: str | os.PathLike, default: Mapping | torch.nn.Module) -> torch.nn.Module:
    """The network ``checkpoint``'s weights belong to: built from the definition recorded beside it, else from
    ``default`` (a definition, or a network that is copied)."""
    config = saved_network_config(checkpoint)
    if config is not None:
        logger.info(
            "network of %s: %s, as %s records", Path(checkpoint).name, config.get("target"), record_path(checkpoint)
        )
        return build_network(config)
    if isinstance(default, torch.nn.Module):
        return copy.deepcopy(default)
    return build_network(default)
