"""Checkpoints of a training run: the best model for users, the full state for resuming.

* :class:`BestModelSaver` (attached to the validator) writes ``models/model.pt``, a plain ``state_dict`` that
  loads with ``torch.load(weights_only=True)``, whenever the key metric improves, plus a small JSON record of the
  score and epoch beside it.
* :func:`load_weights` / :class:`LoadBestModel`: ``weights_only=True`` loading of ``models/model.pt``, with errors
  that say what is wrong with the file (inference and evaluation);
* :class:`TrainingCheckpoint` (attached to the trainer) writes ``<ckpt_dir>/checkpoint.pt`` after every epoch:
  network, optimizer, LR scheduler, AMP grad scaler, the trainer's epoch and iteration, and the random number
  generator states. With ``resume=True`` it loads that file when training starts, so a killed run continues from
  its last completed epoch (``python -m monai.bundle run ... --resume true``).

Writes are atomic (temporary file + rename) and happen on rank 0 only, so a kill mid-write never leaves a
truncated checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from scripts.data.resize import image_size_pair
from scripts.networks.definition import IMAGE_SIZE_KEY, RECORD_KEY, definition_of, record_path, saved_network_config
from scripts.utils.distributed import is_main_process, unwrap
from scripts.utils.errors import error_reason
from scripts.utils.files import atomic_open, write_json
from scripts.utils.flags import switches

logger = logging.getLogger(__name__)

__all__ = ["BestModelSaver", "InitialWeights", "LoadBestModel", "ReportSavedModel", "TrainingCheckpoint", "keep_with_run", "load_weights", "save_model", "write_ensemble_override"]


def _atomic_torch_save(obj, path: Path) -> None:
    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


def save_model(network: torch.nn.Module, path: str | os.PathLike, record: Mapping, image_size=None,
               weights_of: torch.nn.Module | None = None) -> None:  # fmt: skip
    """Write ``network``'s weights (or those of ``weights_of``, a copy of it such as SWA's average) to ``path`` as a
    plain ``state_dict`` (CPU tensors, ``weights_only``-loadable) and ``record`` beside it (``model.json``), with
    ``network``'s definition (``definition_of``: when it was built from one) and whole-image size added, so whatever
    loads the weights builds the network they belong to and resizes as training did. Both writes are atomic; the
    record goes last."""
    path = Path(path)
    state = {key: value.detach().cpu() for key, value in unwrap(network if weights_of is None else weights_of).state_dict().items()}
    _atomic_torch_save(state, path)
    size = image_size_pair(image_size)
    record = {**record, IMAGE_SIZE_KEY: list(size) if size is not None else None}
    network_config = definition_of(network)
    if network_config is not None:
        record[RECORD_KEY] = network_config
    write_json(record_path(path), record)


def write_ensemble_override(path: str | os.PathLike, checkpoints, ckpt_dir: str | os.PathLike, weights=None,
                            thresholds_file: str | os.PathLike | None = None, **extra) -> None:  # fmt: skip
    """Write ``path``, an override for ``inference.json`` / ``evaluate.json`` that runs ``checkpoints`` as one
    ensemble (``ensemble_weights`` ``weights``), with its thresholds from ``thresholds_file`` (default
    ``ensemble_thresholds.json`` beside ``path``; ``triplet`` while there is none). Paths inside ``ckpt_dir`` are
    written relative to it (``$@ckpt_dir + '/...'``), so the folder can be moved and named by ``--ckpt_dir``."""
    path, ckpt_dir = Path(path), Path(ckpt_dir)

    def named(file) -> str:
        file = Path(file)
        try:
            return f"$@ckpt_dir + '/{file.relative_to(ckpt_dir).as_posix()}'"
        except ValueError:
            return str(file)

    override = {
        "checkpoints": [named(file) for file in checkpoints],
        "ensemble_weights": None if weights is None else [float(weight) for weight in weights],
        "thresholds_file": named(thresholds_file if thresholds_file is not None else path.with_name("ensemble_thresholds.json")),
        **extra,
    }
    write_json(path, override)


class BestModelSaver:
    """Save the network's weights whenever the validator's ``metric_name`` improves (higher is better).

    Args:
        network: the trained network (wrappers are removed before saving).
        path: weights file, e.g. ``models/model.pt``.
        metric_name: a metric of the validator; default its key metric.
        resume: continue an earlier run: start from the best score recorded beside ``path`` instead of from none,
            so a resumed run never replaces a better model with a worse one.
        record_network: write the definition the network was built from (``network_config``, through
            ``scripts.networks.definition.build_network``) into the record beside ``path`` (``models/model.json``),
            so that whatever loads the weights builds the network they belong to; a network built otherwise (an
            older ``network_def`` component override) is refused here, before training, since nothing could say
            which network its weights belong to.
        image_size: the whole-image size the network trains at (null: full-resolution crops), recorded too, so
            evaluation, inference and MONAI Label resize as training did.
    """

    @switches(resume="resume")
    def __init__(
        self,
        network: torch.nn.Module,
        path: str | os.PathLike,
        metric_name: str | None = None,
        resume: bool = False,
        record_network: bool = False,
        image_size=None,
    ):
        self.network, self.path, self.metric_name = network, Path(path), metric_name
        self.network_config = definition_of(network)
        self.image_size = image_size_pair(image_size)
        if record_network and self.network_config is None:
            raise ValueError(
                f"network_def: a {type(unwrap(network)).__name__} not built from network_config, so {record_path(path)} "
                "could not say which network the weights belong to; since version 0.4.0 a network is defined as "
                'network_config ({"target": <MONAI name or dotted path>, <arguments>}; configs/networks/ has examples) '
                "and network_def is built from it"
            )
        self.record_path = record_path(self.path)
        self.best = -float("inf")
        if resume and self.record_path.is_file():
            self.best = float(json.loads(self.record_path.read_text())["score"])

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        name = self.metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None or name not in engine.state.metrics:
            raise KeyError(f"BestModelSaver: metric {name!r} not among the validator's {sorted(engine.state.metrics)}")
        score = float(engine.state.metrics[name])
        if not score > self.best:  # also skips NaN
            return
        self.best = score
        if not is_main_process():
            return
        record = {"metric": name, "score": score, "epoch": engine.state.epoch}
        save_model(self.network, self.path, record, image_size=self.image_size)
        logger.info("new best %s %.4f at epoch %d: saved %s", name, score, engine.state.epoch, self.path)


_KEPT_WITH_RUN = "_kept_with_the_run"


def keep_with_run(engine: Engine, name: str, obj) -> None:
    """Have :class:`TrainingCheckpoint` save and restore ``obj`` (``state_dict`` / ``load_state_dict``) with the run
    of ``engine``, under ``name``: how a handler that keeps state (SWA's average) joins the training checkpoint from
    its ``attach``, without the config naming it twice (MONAI's and MONAI Label's tools read ``train#handlers`` as
    a list of definitions, so it cannot hold references)."""
    kept = getattr(engine, _KEPT_WITH_RUN, None)
    if kept is None:
        kept = {}
        setattr(engine, _KEPT_WITH_RUN, kept)
    kept[name] = obj


class TrainingCheckpoint:
    """Save everything needed to resume training after each ``save_interval`` epochs; optionally resume.

    Args:
        ckpt_dir: folder of ``checkpoint.pt``.
        objects: name -> object with ``state_dict()`` / ``load_state_dict()`` (network, optimizer, lr_scheduler).
            The trainer's AMP grad scaler is added by itself when the trainer has one, and so is what handlers
            gave :func:`keep_with_run`.
        resume: load ``checkpoint.pt`` when the trainer starts (it must exist).
        save_interval: epochs between saves.
    """

    filename = "checkpoint.pt"

    @switches(resume="resume")
    def __init__(self, ckpt_dir: str | os.PathLike, objects: Mapping[str, object], resume: bool = False, save_interval: int = 1):
        self.path = Path(ckpt_dir) / self.filename
        self.objects = dict(objects)
        self.resume = resume
        self.save_interval = save_interval
        if resume and not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no checkpoint to resume from")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)

    def _stateful(self, engine: Engine) -> dict[str, object]:
        objects = {**getattr(engine, _KEPT_WITH_RUN, {}), **self.objects}
        objects = {name: (unwrap(obj) if isinstance(obj, torch.nn.Module) else obj) for name, obj in objects.items()}
        scaler = getattr(engine, "scaler", None)
        if scaler is not None:
            objects["scaler"] = scaler
        return objects

    def save(self, engine: Engine) -> None:
        if not is_main_process():
            return
        numpy_state = np.random.get_state()
        checkpoint = {name: obj.state_dict() for name, obj in self._stateful(engine).items()}
        checkpoint["trainer"] = {"epoch": engine.state.epoch, "iteration": engine.state.iteration}
        checkpoint["rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
            "python": random.getstate(),
        }
        _atomic_torch_save(checkpoint, self.path)
        logger.info("epoch %d: saved %s", engine.state.epoch, self.path)

    def load(self, engine: Engine) -> None:
        try:
            checkpoint = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"{self.path}: cannot read the training checkpoint: {error}") from error
        for name, obj in self._stateful(engine).items():
            if name not in checkpoint and not obj.state_dict():
                continue  # an object that has no state yet (SWA before its first epoch, or off) is not required
            if name not in checkpoint:
                raise KeyError(f"{self.path}: holds no {name!r} state (it has {sorted(checkpoint)})")
            obj.load_state_dict(checkpoint[name])
        engine.state.epoch = int(checkpoint["trainer"]["epoch"])
        engine.state.iteration = int(checkpoint["trainer"]["iteration"])
        rng = checkpoint["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        name, keys, *rest = rng["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
        random.setstate(_as_tuples(rng["python"]))
        logger.info("resumed from %s after epoch %d (iteration %d)", self.path, engine.state.epoch, engine.state.iteration)


class ReportSavedModel:
    """When training completes, say where its model is (the file :class:`BestModelSaver` wrote, its score and
    epoch), or fail: a finished run that saved no model is an error, not a silent exit 0.

    Args:
        path: the weights file, e.g. ``models/model.pt``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        record = self.path.with_suffix(".json")
        if not self.path.is_file() or not record.is_file():
            raise RuntimeError(
                f"training finished after epoch {engine.state.epoch} but saved no model at {self.path}: "
                "no validation produced a score (is the validation fold empty, or every score NaN?)"
            )
        saved = json.loads(record.read_text(encoding="utf-8"))
        logger.info(
            "model: %s (%s %.4f at epoch %s; resume state in the training checkpoint)",
            self.path, saved.get("metric"), float(saved.get("score", float("nan"))), saved.get("epoch"),
        )  # fmt: skip


def load_weights(network: torch.nn.Module, path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a plain ``state_dict`` (``models/model.pt``) into ``network`` with ``weights_only=True``.

    Raises:
        FileNotFoundError: no file at ``path``, with a hint on where weights come from.
        ValueError: the file is not a state dict of this network: the message names the file, where the network was
            defined (the record beside it, ``models/model.json``, or ``network_config``) and the first key that
            does not fit.
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
    except Exception as error:  # truncated, empty, not a torch file: torch's messages range from clear to empty
        raise ValueError(
            f"{path}: cannot be read as PyTorch weights ({error_reason(error)}; {path.stat().st_size} bytes): "
            "a truncated copy, or not a file saved by torch.save?"
        ) from error
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state_dict, got {type(state).__name__}")
    mismatch = _first_mismatch(network.state_dict(), state)
    if mismatch is None:
        try:
            network.load_state_dict(state)
        except RuntimeError as error:
            mismatch = " ".join(line.strip() for line in str(error).strip().splitlines()[:3])[:400]
    if mismatch is not None:
        record = record_path(path)
        defined = f"the one {record} defines" if saved_network_config(path) is not None else "network_config"
        raise ValueError(f"{path}: weights of another network than {defined} ({mismatch})")
    return network


def _first_mismatch(expected: Mapping[str, torch.Tensor], state: Mapping[str, object]) -> str | None:
    """The first key of ``state`` that does not fit ``expected`` (a network's ``state_dict``), in words."""
    for key, tensor in expected.items():
        if key not in state:
            return f"first mismatched key: {key}, which the file lacks"
        value = state[key]
        if isinstance(value, torch.Tensor) and tuple(value.shape) != tuple(tensor.shape):
            return f"first mismatched key: {key}, {tuple(value.shape)} in the file, {tuple(tensor.shape)} in the network"
    extra = next((key for key in state if key not in expected), None)
    return f"first mismatched key: {extra}, which the network lacks" if extra is not None else None


class LoadBestModel:
    """Load ``path`` (``models/model.pt``) into ``network`` when the engine starts (evaluation), with
    :func:`load_weights`' errors: a missing file, a truncated one, or weights of another network, each named. An
    ensemble (``AveragedProbabilities``) loads its own checkpoints then instead."""

    def __init__(self, network: torch.nn.Module, path: str | os.PathLike) -> None:
        self.network, self.path = network, Path(path)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.load)

    def load(self, _engine: Engine | None = None) -> None:
        network = unwrap(self.network)
        if hasattr(network, "load_checkpoints"):  # an ensemble (scripts.inference.ensemble) loads its own members
            network.load_checkpoints()
        else:
            load_weights(network, self.path, "cpu")


def _as_tuples(value):
    return tuple(_as_tuples(item) for item in value) if isinstance(value, (list, tuple)) else value


class InitialWeights:
    """Start training from the weights at ``path`` (a ``models/model.pt`` of the same network), loaded when the
    trainer starts, e.g. the second step of progressive training: 512 x 512 first, then fine-tuning at full
    resolution. Nothing happens with ``path`` null, or when resuming (the resumed state has its own weights).
    A file of another network fails before the first iteration (:func:`load_weights`' error)."""

    @switches(resume="resume")
    def __init__(self, network: torch.nn.Module, path: str | os.PathLike | None, resume: bool = False) -> None:
        self.network, self.path, self.resume = network, Path(path) if path else None, resume
        if self.path is not None and not self.path.is_file():
            raise FileNotFoundError(f"init_weights {self.path}: no such file")

    def attach(self, engine: Engine) -> None:
        if self.path is not None and not self.resume:
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        load_weights(unwrap(self.network), self.path, "cpu")
        logger.info("training starts from the weights of %s", self.path)
