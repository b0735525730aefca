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
import functools
import json
import logging
import os
import pydoc
import weakref
from collections.abc import Mapping
from pathlib import Path

import torch

from scripts.utils.distributed import unwrap
from scripts.utils.flags import as_flag

__all__ = [
    "ENCODER_WEIGHTS",
    "RECORD_KEY",
    "build_network",
    "definition_of",
    "image_size_for",
    "load_encoder_weights",
    "network_for",
    "record_path",
    "recorded_definition",
    "saved_network_config",
]

logger = logging.getLogger(__name__)

#: The key of the network definition in a checkpoint's record (``model.json``).
RECORD_KEY = "network"
#: The key of the whole-image size a checkpoint was trained at (null: full-resolution crops) in its record.
IMAGE_SIZE_KEY = "image_size"
#: The definition key naming a saved encoder state dict to start from.
ENCODER_WEIGHTS = "encoder_weights"
#: The definition key asking for an image-level head (``scripts.networks.image_head``).
IMAGE_HEAD_KEY = "image_head"


#: Keys of a definition that describe it and are not arguments of the network.
_NOT_ARGUMENTS = ("target", "_desc_", ENCODER_WEIGHTS, IMAGE_HEAD_KEY)
#: Each network :func:`build_network` built -> the definition a checkpoint of it records.
_DEFINITIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def build_network(config: Mapping, **unexpected) -> torch.nn.Module:
    """The network ``config`` defines: ``target`` (a MONAI network's name, as bundle configs name a ``_target_``,
    or a dotted path) called with the other keys as they are (no ``$`` / ``@`` / ``#`` parsing of the values).

    ``image_head: true`` asks for the network with an image-level head (``scripts.networks.image_head``: MONAI's
    ``FlexibleUNet`` and ``AttentionUnet`` become their gated subclasses; networks of our own take the argument).
    ``encoder_weights`` (a path) is not an argument of the network: after building, that state dict is loaded into
    the network's ``encoder`` (``FlexibleUNet``'s), which is how pretrained encoders reach offline machines
    (:func:`load_encoder_weights`). The network remembers its definition (:func:`definition_of`), which training
    records beside its weights.

    Raises:
        ValueError: ``config`` is not a definition (no ``target``), is not plain JSON data, or the target cannot be
            built with these arguments (the message says which); ``unexpected`` arguments, which are what an
            older ``--network_def#<argument>`` override becomes.
    """
    import scripts.networks.encoders  # noqa: F401  (registers the FlexibleUNet backbones MONAI lacks)
    from scripts.networks.image_head import gated_target

    _refuse_network_def_overrides(unexpected)
    if not isinstance(config, Mapping) or not isinstance(config.get("target"), str):
        raise ValueError(f"a network definition is an object with a 'target' name, got {str(config)[:200]}")
    recorded = recorded_definition(config)
    try:
        json.dumps(recorded, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"network {config['target']}: its definition is not plain JSON data ({error})") from None
    arguments = copy.deepcopy({key: value for key, value in config.items() if key not in _NOT_ARGUMENTS})
    target = _locate(config["target"])
    if config.get("out_channels", 1) != 1:  # a second output channel means the image gate's (image_head)
        raise ValueError(
            f"network {config['target']}: out_channels {config['out_channels']}; the bundle's networks give one "
            "pneumothorax logit (and, with image_head true, the image's as a second channel)"
        )
    if recorded.get(IMAGE_HEAD_KEY):
        target, arguments[IMAGE_HEAD_KEY] = gated_target(target, config["target"]), True
    try:
        network = target(**arguments)
    except Exception as error:
        raise ValueError(
            f"network {config['target']} cannot be built from its definition: {type(error).__name__}: {error}"
        ) from error
    if not isinstance(network, torch.nn.Module):
        raise ValueError(f"network {config['target']}: its target gave a {type(network).__name__}, not a network")
    if config.get(ENCODER_WEIGHTS):
        load_encoder_weights(network, config[ENCODER_WEIGHTS])
    _DEFINITIONS[network] = recorded
    return network


def definition_of(network: torch.nn.Module) -> dict | None:
    """The definition ``network`` (or the module inside its DDP / compile wrappers) was built from by
    :func:`build_network`, as a checkpoint records it; None for a network built otherwise."""
    recorded = _DEFINITIONS.get(unwrap(network))
    return copy.deepcopy(recorded) if recorded is not None else None


@functools.lru_cache(maxsize=None)
def _locate(target: str):
    """The class or function ``target`` names: a dotted path, or a name MONAI's component locator knows."""
    path = target
    if "." not in target:
        modules = _component_locator().get_component_module_name(target)
        module = modules[0] if isinstance(modules, list) else modules
        path = f"{module}.{target}" if module else target
    try:
        found = pydoc.locate(path)
    except pydoc.ErrorDuringImport as error:
        raise ValueError(f"network {target} cannot be built from its definition: {error.value}") from None
    if not callable(found):
        raise ValueError(
            f"network {target} cannot be built from its definition: no such network (a MONAI network's name, "
            "e.g. AttentionUnet, or a dotted path such as scripts.networks.unetplusplus.UNetPlusPlus)"
        )
    return found


@functools.lru_cache(maxsize=1)
def _component_locator():
    from monai.bundle.config_item import ComponentLocator

    return ComponentLocator()


def _refuse_network_def_overrides(unexpected: Mapping) -> None:
    """The clear error for ``--network_def#<argument>`` (before 0.4.0 the network's arguments were there)."""
    if unexpected:
        names = ", ".join(sorted(unexpected))
        raise ValueError(
            f"network_def#{names}: the network's arguments are in network_config since version 0.4.0 (network_def "
            f"is built from it); override --network_config#{sorted(unexpected)[0]} instead"
        )


def load_encoder_weights(network: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load a saved encoder state dict (``weights_only``; e.g. torchvision's ImageNet ``resnet34``, or Cadene's
    ``se_resnext50_32x4d``) into ``network.encoder``.

    Keys the encoder lacks (a classifier's ``fc.*``) are left out. A first convolution saved for 3 input channels
    (RGB) goes into a 1-channel encoder summed over its channels, the usual way grey images use colour weights
    (``scripts.networks.encoders.fit_state_dict``).

    Raises:
        ValueError: the network has no ``encoder``, the file cannot be read, or it leaves encoder weights unset or
            of another shape (naming the first such key).
    """
    from scripts.networks.encoders import fit_state_dict

    encoder = getattr(network, "encoder", None)
    if not isinstance(encoder, torch.nn.Module):
        raise ValueError(f"encoder_weights {path}: {type(network).__name__} has no encoder to load them into")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = f"{type(error).__name__}: {error}"
        raise ValueError(f"encoder_weights {path}: cannot be read as a state dict ({reason})") from None
    if not isinstance(saved, Mapping):
        raise ValueError(f"encoder_weights {path}: a {type(saved).__name__}, not a state dict")
    own_layout = getattr(encoder, "own_layout", dict)
    state = fit_state_dict(encoder, own_layout(saved), f"encoder_weights {path}")
    encoder.load_state_dict(state)
    logger.info("encoder weights loaded from %s (%d tensors)", path, len(state))
    return network


def recorded_definition(config: Mapping) -> dict:
    """``config`` as a checkpoint records it: without what only initialises (``encoder_weights``, ``pretrained``),
    since the checkpoint's own weights replace those, and the file need not exist where the checkpoint is used."""
    recorded = {key: copy.deepcopy(value) for key, value in config.items() if key != ENCODER_WEIGHTS}
    if recorded.get("pretrained"):
        recorded["pretrained"] = False
    if IMAGE_HEAD_KEY in recorded:  # "true" from the command line is recorded as the bool it means
        try:
            recorded[IMAGE_HEAD_KEY] = as_flag(recorded[IMAGE_HEAD_KEY], "image_head")
        except ValueError as error:
            raise ValueError(f"network {config.get('target')}: {error}") from None
    return recorded


def record_path(checkpoint: str | os.PathLike) -> Path:
    """Where a checkpoint's record is: ``models/model.pt`` -> ``models/model.json``."""
    return Path(checkpoint).with_suffix(".json")


def saved_network_config(checkpoint: str | os.PathLike) -> dict | None:
    """The network definition recorded beside ``checkpoint``, or None (no record, or an older one without it).

    Raises:
        ValueError: the record exists but is not readable JSON (naming it).
    """
    config = saved_record(checkpoint).get(RECORD_KEY)
    return config if isinstance(config, dict) else None


def saved_record(checkpoint: str | os.PathLike) -> dict:
    """The record beside ``checkpoint`` (``model.json``), or an empty one.

    Raises:
        ValueError: the record exists but is not readable JSON (naming it).
    """
    path = record_path(checkpoint)
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: the record of {Path(checkpoint).name} is not readable JSON ({error})") from None
    return record if isinstance(record, dict) else {}


def image_size_for(checkpoints) -> list[int] | None:
    """The whole-image size the checkpoints were trained at (their records' ``image_size``; null for full-resolution
    crops, as for a checkpoint without a record).

    Raises:
        ValueError: the checkpoints were trained at different sizes (an ensemble runs at one), naming them.
    """
    if isinstance(checkpoints, (str, os.PathLike)):
        checkpoints = [checkpoints]
    sizes = {str(path): saved_record(path).get(IMAGE_SIZE_KEY) for path in checkpoints}
    if len({json.dumps(size) for size in sizes.values()}) > 1:
        listed = ", ".join(f"{path}: {size if size is not None else 'full resolution'}" for path, size in sizes.items())
        raise ValueError(f"the checkpoints were trained at different image sizes ({listed}); an ensemble runs at one")
    return next(iter(sizes.values()), None)


def network_for(checkpoint: str | os.PathLike, default: Mapping | torch.nn.Module, **unexpected) -> torch.nn.Module:
    """The network ``checkpoint``'s weights belong to: built from the definition recorded beside it, else from
    ``default`` (a definition, or a network that is copied). A record wins over ``default``, and the log says
    so when they differ (a ``--network_config`` override at inference changes nothing then)."""
    _refuse_network_def_overrides(unexpected)
    config = saved_network_config(checkpoint)
    if config is not None:
        logger.info(
            "network of %s: %s, as %s records", Path(checkpoint).name, config.get("target"), record_path(checkpoint)
        )
        if isinstance(default, Mapping) and recorded_definition(default) != config:
            logger.info("network_config differs from that record and is not used for %s", checkpoint)
        return build_network(config)
    if isinstance(default, torch.nn.Module):
        network = copy.deepcopy(default)
        if definition_of(default) is not None:
            _DEFINITIONS[network] = definition_of(default)
        return network
    return build_network(default)
