"""Inference on a CPU runtime: the networks of the ensemble exported to ONNX once and run by OpenVINO or ONNX Runtime.

``configs/inference.json`` runs its network through :func:`with_backend`: ``backend`` ``torch`` keeps PyTorch;
``openvino`` or ``onnxruntime`` replaces each member of the :class:`~scripts.inference.ensemble.AveragedProbabilities`
ensemble by an :class:`ExportedNetwork` on that runtime, so flip TTA, ensembles and the sliding window (which calls
the ensemble) work the same. The default (:func:`default_backend`) is OpenVINO on a CPU (the faster of the two
measured, docs/README.md) and PyTorch (with AMP) on a GPU. OpenVINO runs in float32 (its CPU plugin would otherwise
pick bfloat16 where the CPU has it, which moves probabilities by more than the parity bound).

Each member is exported with torch's ONNX exporter for the input shape it is called with (a batch of sliding
windows, any batch size) and cached beside its weights, ``<ckpt_dir>/onnx/<weights stem>-<key>.onnx``: the key is a
hash of the weights file, the network's definition (``scripts.networks.definition``), the input's spatial shape,
the torch version and the opset, so new weights, another network or another window size get a new file and an
unchanged model is never exported twice. The file is written to a temporary name and renamed. Where the weights'
folder cannot be written, the cache is ``$TMPDIR/pneumothorax-onnx``. The runtime uses as many threads as the
process may use cores.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from scripts.networks.definition import definition_of

__all__ = ["BACKENDS", "OPSET", "ExportedNetwork", "default_backend", "onnx_path", "with_backend"]

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "openvino", "onnxruntime")
#: The CPU runtimes, fastest first (docs/README.md, "Inference backends"): the default is the first installed.
CPU_RUNTIMES = ("openvino", "onnxruntime")
OPSET = 18
_INPUT, _OUTPUT = "image", "logits"


def default_backend(device: str | torch.device) -> str:
    """The fastest CPU runtime installed (:data:`CPU_RUNTIMES`) on a CPU, ``torch`` on a GPU."""
    if torch.device(device).type != "cpu":
        return "torch"
    for runtime in CPU_RUNTIMES:
        try:
            importlib.import_module(runtime)
        except ImportError:
            continue
        return runtime
    return "torch"


def cpu_threads() -> int:
    """The cores this process may run on (its affinity, as a container or ``taskset`` sets it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onnx_path(checkpoint: str | os.PathLike, network: torch.nn.Module, spatial_shape: Sequence[int]) -> Path:
    """Where the export of ``network`` with the weights ``checkpoint`` for inputs of ``spatial_shape`` is cached."""
    checkpoint = Path(checkpoint)
    definition = definition_of(network) or {"class": f"{type(network).__module__}.{type(network).__qualname__}"}
    key_text = json.dumps(
        {"weights": _hash_file(checkpoint), "network": definition, "shape": list(spatial_shape),
         "torch": torch.__version__, "opset": OPSET}, sort_keys=True, default=str,
    )  # fmt: skip
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    name = f"{checkpoint.stem}-{key}.onnx"
    folder = checkpoint.parent / "onnx"
    try:
        folder.mkdir(exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder / name
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / "pneumothorax-onnx"
    fallback.mkdir(exist_ok=True)
    return fallback / name


def export_onnx(network: torch.nn.Module, path: Path, spatial_shape: Sequence[int]) -> Path:
    """Export ``network`` (eval mode, on the CPU, in float32) for ``(batch, 1, *spatial_shape)`` inputs, batch
    dynamic, to ``path``, atomically."""
    network = copy.deepcopy(network).to("cpu", memory_format=torch.contiguous_format).float().eval()
    example = torch.zeros((1, 1, *spatial_shape), dtype=torch.float32)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and tracer warnings
            torch.onnx.export(network, (example,), str(temporary), input_names=[_INPUT], output_names=[_OUTPUT],
                              dynamic_axes={_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}}, opset_version=OPSET,
                              dynamo=False)  # fmt: skip
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


class ExportedNetwork(torch.nn.Module):
    """``network`` with the weights of ``checkpoint``, exported to ONNX and run by ``runtime`` (``openvino`` or
    ``onnxruntime``) on the CPU.

    Inputs and outputs are torch tensors, as for the network itself; an input on another device is copied to the
    CPU and the output back. One session per input shape, each exported once (:func:`onnx_path`). A network the
    exporter or ONNX Runtime cannot take runs on PyTorch instead, with one warning that says why.
    """

    def __init__(self, network: torch.nn.Module, checkpoint: str | os.PathLike, threads: int | None = None,
                 runtime: str = "openvino") -> None:  # fmt: skip
        super().__init__()
        if runtime not in CPU_RUNTIMES:
            raise ValueError(f"runtime {runtime!r}: one of {', '.join(CPU_RUNTIMES)}")
        self.network = network  # kept for exports of new input shapes, and as the network's identity
        self.checkpoint = str(checkpoint)
        self.runtime = runtime
        self.threads = threads or cpu_threads()
        self._sessions: dict[tuple[int, ...], object] = {}
        self.fallback: str | None = None  # why this member runs on PyTorch after all

    def session(self, spatial_shape: tuple[int, ...]):
        """A callable ``numpy batch -> numpy logits`` for inputs of ``spatial_shape``, built once."""
        if spatial_shape not in self._sessions:
            path = onnx_path(self.checkpoint, self.network, spatial_shape)
            if not path.is_file():
                logger.info("exporting %s for %s inputs to %s", self.checkpoint, "x".join(map(str, spatial_shape)), path)
                export_onnx(self.network, path, spatial_shape)
            self._sessions[spatial_shape] = _open(path, self.runtime, self.threads)
        return self._sessions[spatial_shape]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fallback is None:
            try:
                session = self.session(tuple(int(size) for size in x.shape[2:]))
            except Exception as error:  # an operator the exporter or ONNX Runtime lacks: PyTorch still works
                self.fallback = f"{type(error).__name__}: {error}"
                logger.warning("%s runs on PyTorch: its ONNX export failed (%s)", self.checkpoint, self.fallback[:300])
        if self.fallback is not None:
            return self.network(x)
        output = session(x.detach().to("cpu", torch.float32).contiguous().numpy())
        return torch.from_numpy(output).to(x.device)


def _open(path: Path, runtime: str, threads: int):
    """The exported network at ``path`` on ``runtime``, as a callable ``numpy batch -> numpy logits``."""
    if runtime == "openvino":
        import openvino

        compiled = openvino.Core().compile_model(str(path), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})  # fmt: skip
        request = compiled.create_infer_request()
        return lambda batch: np.array(request.infer({_INPUT: batch})[compiled.output(0)], copy=True)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run([_OUTPUT], {_INPUT: batch})[0]


def with_backend(network: torch.nn.Module, backend: str = "torch", threads: int | None = None) -> torch.nn.Module:
    """The network inference runs on ``backend``: ``network`` itself for ``torch``; for ``openvino`` or
    ``onnxruntime`` a copy of the ensemble (``AveragedProbabilities``) whose members run on that runtime.
    ``network`` itself is left as it is (Grad-CAM heatmaps need its PyTorch modules).

    Raises:
        ValueError: an unknown backend, or a CPU runtime for a network that is not an ensemble of checkpoints.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return network
    members, checkpoints = getattr(network, "networks", None), getattr(network, "checkpoints", None)
    if members is None or checkpoints is None:
        raise ValueError(f"backend {backend} runs an AveragedProbabilities ensemble, not {type(network).__name__}")
    exported = copy.copy(network)
    exported._modules = dict(network._modules)
    exported.networks = torch.nn.ModuleList(
        [ExportedNetwork(member, path, threads, backend) for member, path in zip(members, checkpoints)]
    )
    logger.info("inference on %s (%d threads)", backend, threads or cpu_threads())
    return exported
