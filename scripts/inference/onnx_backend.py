"""Inference on a CPU runtime: the networks of the ensemble exported to ONNX once and run by OpenVINO or ONNX Runtime.

``configs/inference.json`` runs its network through :func:`with_backend`: ``backend`` ``torch`` keeps PyTorch;
``openvino`` or ``onnxruntime`` replaces each member of the :class:`~scripts.inference.ensemble.AveragedProbabilities`
ensemble by an :class:`ExportedNetwork` on that runtime, so flip TTA, ensembles and the sliding window (which calls
the ensemble) work the same. The default (:func:`default_backend`) is OpenVINO on a CPU (the faster of the two
measured, docs/README.md) and PyTorch (with AMP) on a GPU. OpenVINO runs in float32 (its CPU plugin would otherwise
pick bfloat16 where the CPU has it, which moves probabilities by more than the parity bound); ``precision`` ``bf16``
(``--cpu_precision bf16``) lets it, for several times the speed on CPUs with AMX, outside that bound.

Each member is exported with torch's ONNX exporter for the input shape it is called with (a batch of sliding
windows, any batch size) and cached beside its weights, ``<ckpt_dir>/onnx/<weights stem>-<key>.onnx``: the key
hashes the weights as they are in memory (:func:`weights_key`), the network's definition and the source of its
module classes, the input's spatial shape, the torch and MONAI versions and the opset, so new weights, another
network, changed code or another window size get a new file and an unchanged model is never exported twice. The
file is written to a temporary name of its own, fsynced and renamed; one that does not open is exported again.
Where the weights' folder cannot be written, the cache is ``$TMPDIR/pneumothorax-onnx-<uid>`` (mode 0700). The
runtime uses as many threads as the process may use cores; a member may be called from several threads at once.
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import importlib
import json
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from scripts.networks.definition import definition_of

__all__ = ["BACKENDS", "OPSET", "PRECISIONS", "ExportedNetwork", "check_precision", "default_backend", "fallbacks",
           "onnx_path", "openvino_core", "with_backend"]

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "openvino", "onnxruntime")
#: The CPU runtimes, fastest first (docs/README.md, "Inference backends"): the default is the first installed.
CPU_RUNTIMES = ("openvino", "onnxruntime")
OPSET = 18
#: What a CPU runtime computes in: float32 (the default, within the parity bound of PyTorch) or, on OpenVINO only,
#: bfloat16 where the CPU has it (AVX512-BF16, AMX; float32 elsewhere).
PRECISIONS = ("f32", "bf16")
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


def weights_key(network: torch.nn.Module) -> str:
    """A hash of what the export of ``network`` depends on: its weights as they are in memory (not a file that may
    have changed since they were loaded), its definition, the source of every module class it is made of, and the
    torch, MONAI and opset versions."""
    import inspect

    import monai

    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    sources = set()
    for module in network.modules():
        try:
            sources.add(inspect.getsourcefile(type(module)))
        except TypeError:  # a built-in class
            pass
    for source in sorted(path for path in sources if path):
        digest.update(Path(source).read_bytes())
    definition = definition_of(network) or {"class": f"{type(network).__module__}.{type(network).__qualname__}"}
    digest.update(json.dumps({"network": definition, "torch": torch.__version__, "monai": monai.__version__,
                              "opset": OPSET}, sort_keys=True, default=str).encode())  # fmt: skip
    return digest.hexdigest()


def onnx_path(checkpoint: str | os.PathLike, network: torch.nn.Module, spatial_shape: Sequence[int],
              key: str | None = None) -> Path:  # fmt: skip
    """Where the export of ``network`` (whose weights came from ``checkpoint``) for inputs of ``spatial_shape`` is
    cached: ``<checkpoint's folder>/onnx/<stem>-<key>.onnx``, the key from :func:`weights_key` and the shape; a
    folder of this user's own under ``$TMPDIR`` where the weights' folder cannot be written."""
    checkpoint = Path(checkpoint)
    key = key or weights_key(network)
    name = f"{checkpoint.stem}-{hashlib.sha256(f'{key}{list(spatial_shape)}'.encode()).hexdigest()[:16]}.onnx"
    folder = checkpoint.parent / "onnx"
    try:
        folder.mkdir(exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder / name
    except OSError:
        pass
    return _private_cache() / name


def _private_cache() -> Path:
    """``$TMPDIR/pneumothorax-onnx-<uid>``, mode 0700, refused unless this user owns it."""
    folder = Path(tempfile.gettempdir()) / f"pneumothorax-onnx-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{folder} is not this user's own private folder: the ONNX cache cannot use it")
    return folder


def export_onnx(network: torch.nn.Module, path: Path, spatial_shape: Sequence[int]) -> Path:
    """Export ``network`` (eval mode, on the CPU, in float32) for ``(batch, 1, *spatial_shape)`` inputs, batch
    dynamic, to ``path``, atomically (a temporary file of its own beside it, fsynced, then renamed)."""
    network = copy.deepcopy(network).to("cpu", memory_format=torch.contiguous_format).float().eval()
    example = torch.zeros((1, 1, *spatial_shape), dtype=torch.float32)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(descriptor)
    temporary = Path(temporary)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and tracer warnings
            torch.onnx.export(network, (example,), str(temporary), input_names=[_INPUT], output_names=[_OUTPUT],
                              dynamic_axes={_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}}, opset_version=OPSET,
                              dynamo=False)  # fmt: skip
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


#: torch's exporter keeps global state: one export at a time in a process.
_EXPORT_LOCK = threading.Lock()


class ExportedNetwork(torch.nn.Module):
    """``network`` with the weights of ``checkpoint``, exported to ONNX and run by ``runtime`` (``openvino`` or
    ``onnxruntime``) on the CPU.

    Inputs and outputs are torch tensors, as for the network itself; an input on another device is copied to the
    CPU and the output back. One session per input shape, each exported once (:func:`onnx_path`). A network the
    exporter or ONNX Runtime cannot take runs on PyTorch instead, with one warning that says why.
    """

    def __init__(self, network: torch.nn.Module, checkpoint: str | os.PathLike, threads: int | None = None,
                 runtime: str = "openvino", precision: str = "f32") -> None:  # fmt: skip
        super().__init__()
        if runtime not in CPU_RUNTIMES:
            raise ValueError(f"runtime {runtime!r}: one of {', '.join(CPU_RUNTIMES)}")
        check_precision(runtime, precision)
        self.precision = precision
        self.network = network  # kept for exports of new input shapes, and as the network's identity
        self.checkpoint = str(checkpoint)
        self.runtime = runtime
        self.threads = threads or cpu_threads()
        self._sessions: dict[tuple[int, ...], object] = {}
        self._lock = threading.Lock()
        self.fallback: str | None = None  # why this member runs on PyTorch after all

    def session(self, spatial_shape: tuple[int, ...]):
        """A callable ``numpy batch -> numpy logits`` for inputs of ``spatial_shape``, built once (thread-safe; the
        callable may be used from several threads at once)."""
        with self._lock:
            if spatial_shape not in self._sessions:
                path = onnx_path(self.checkpoint, self.network, spatial_shape)
                if path.is_file():
                    try:
                        self._sessions[spatial_shape] = _open(path, self.runtime, self.threads, self.precision)
                        return self._sessions[spatial_shape]
                    except Exception as error:  # a cached file that does not open (cut short?): export it again
                        logger.warning("%s does not open on %s (%s): exporting it again", path, self.runtime, error)
                        path.unlink(missing_ok=True)
                logger.info("exporting %s for %s inputs to %s", self.checkpoint, "x".join(map(str, spatial_shape)), path)
                with _EXPORT_LOCK:
                    export_onnx(self.network, path, spatial_shape)
                self._sessions[spatial_shape] = _open(path, self.runtime, self.threads, self.precision)
            return self._sessions[spatial_shape]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fallback is None:
            try:
                session = self.session(tuple(int(size) for size in x.shape[2:]))
            except Exception as error:  # an operator the exporter or the runtime lacks: PyTorch still works
                self.fallback = f"{type(error).__name__}: {error}"
                logger.warning("%s runs on PyTorch: its ONNX export or %s failed (%s)", self.checkpoint, self.runtime,
                               self.fallback[:300])  # fmt: skip
        if self.fallback is not None:
            return self.network(x)
        output = session(x.detach().to("cpu", torch.float32).contiguous().numpy())
        return torch.from_numpy(output).to(x.device)


def check_precision(runtime: str, precision: str) -> None:
    """Refuse a precision that is not one of :data:`PRECISIONS`, or bfloat16 on another backend than OpenVINO."""
    if precision not in PRECISIONS:
        raise ValueError(f"cpu_precision {precision!r}: one of {', '.join(PRECISIONS)}")
    if precision != "f32" and runtime != "openvino":
        raise ValueError(f"cpu_precision {precision} is OpenVINO's: use --backend openvino, or cpu_precision f32 "
                         f"on {runtime}")  # fmt: skip


def _open(path: Path, runtime: str, threads: int, precision: str = "f32"):
    """The exported network at ``path`` on ``runtime``, as a callable ``numpy batch -> numpy logits``."""
    if runtime == "openvino":
        return _open_openvino(path, threads, precision)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run([_OUTPUT], {_INPUT: batch})[0]


def fallbacks(network: torch.nn.Module) -> dict[str, str]:
    """The members of ``network`` (as :func:`with_backend` gave it) that ran on PyTorch instead of their runtime:
    checkpoint -> why (empty when every member ran where it was asked to, or on ``torch``)."""
    members = getattr(network, "networks", [])
    return {member.checkpoint: member.fallback for member in members
            if isinstance(member, ExportedNetwork) and member.fallback is not None}  # fmt: skip


#: Input shapes OpenVINO compiles for exactly, the first it meets: a sliding window's full batches and the rest
#: (about 4 % faster than the dynamic batch, the same numbers); any other shape runs on the dynamic compile.
STATIC_SHAPES = 2

_CORE, _CORE_LOCK = None, threading.Lock()
_FORKED_FROM_A_CORE = False  # this process was forked from one that had made its Core


def openvino_core():
    """The process's one ``openvino.Core``, made on first use and kept for the life of the process.

    One, not one per network: OpenVINO's CPU plugin, made by each Core in the thread that first compiles on it,
    installs a signal stack of its own in that thread and, when freed, puts back the one it found. Two Cores freed in
    the order they were made put back a stack already freed; the next signal with a Python handler (SIGCHLD, SIGINT:
    Python asks for the signal stack) then killed the process with SIGSEGV.

    Raises:
        RuntimeError: in a process forked from one that had made its Core: OpenVINO's threads are not there, and
            OpenVINO would wait for them for ever (start such a process with ``spawn``).
    """
    global _CORE
    if _FORKED_FROM_A_CORE:
        raise RuntimeError("OpenVINO cannot run in a process forked after its parent ran OpenVINO (its threads are "
                           "the parent's): start this process with the 'spawn' method, or use --backend onnxruntime "
                           "or torch")  # fmt: skip
    import openvino

    with _CORE_LOCK:
        if _CORE is None:
            _CORE = openvino.Core()
        return _CORE


def _after_fork_in_child() -> None:
    """A forked child never frees the Core it inherits: freeing it waits for OpenVINO's threads, which stayed in the
    parent, so a child that ended through Python's normal shutdown hung there. It keeps a reference it never drops,
    and gets a lock of its own (the parent's may have been held by another thread at the fork)."""
    global _CORE, _CORE_LOCK, _FORKED_FROM_A_CORE
    _CORE_LOCK = threading.Lock()
    if _CORE is not None:
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(_CORE))
        _CORE, _FORKED_FROM_A_CORE = None, True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _open_openvino(path: Path, threads: int, precision: str):
    """The OpenVINO callable of :func:`_open`: the network compiled with a dynamic batch at once (so that a file
    that does not open fails here, where the member's fallback to PyTorch catches it), and for the first
    :data:`STATIC_SHAPES` input shapes it meets, each on first use (a shape OpenVINO cannot compile statically runs
    on the dynamic compile); one infer request per thread and compiled network (a request is not thread-safe)."""
    core = openvino_core()
    model = core.read_model(str(path))
    properties = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    dynamic = core.compile_model(model, "CPU", properties)
    compiled: dict[tuple[int, ...], object] = {}
    lock, local = threading.Lock(), threading.local()

    def compiled_for(shape: tuple[int, ...]):
        with lock:
            if shape not in compiled and len(compiled) < STATIC_SHAPES:
                try:
                    static = model.clone()
                    static.reshape({_INPUT: list(shape)})
                    compiled[shape] = core.compile_model(static, "CPU", properties)
                except Exception as error:  # the dynamic compile still takes it
                    logger.warning("%s: no static OpenVINO compile for %s inputs (%s): the dynamic one runs them",
                                   path.name, "x".join(map(str, shape)), error)  # fmt: skip
                    compiled[shape] = dynamic
            return compiled.get(shape, dynamic)

    def run(batch: np.ndarray) -> np.ndarray:
        network = compiled_for(batch.shape)
        requests = local.__dict__.setdefault("requests", {})
        if id(network) not in requests:  # the compiled networks live as long as this callable
            requests[id(network)] = network.create_infer_request()
        request = requests[id(network)]
        return np.array(request.infer({_INPUT: batch})[request.model_outputs[0]], copy=True)

    run.compiled = dynamic  # the dynamic-batch compile; its properties are every compile's
    run.static_shapes = compiled  # the shapes compiled exactly so far
    return run


def with_backend(network: torch.nn.Module, backend: str = "torch", threads: int | None = None,
                 precision: str = "f32") -> torch.nn.Module:  # fmt: skip
    """The network inference runs on ``backend``: ``network`` itself for ``torch``; for ``openvino`` or
    ``onnxruntime`` a copy of the ensemble (``AveragedProbabilities``) whose members run on that runtime, in
    ``precision`` (:data:`PRECISIONS`). ``network`` itself is left as it is (Grad-CAM heatmaps need its PyTorch
    modules).

    Raises:
        ValueError: an unknown backend or precision, bfloat16 on another backend than OpenVINO, or a CPU runtime for
            a network that is not an ensemble of checkpoints.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: one of {', '.join(BACKENDS)}")
    check_precision(backend, precision)
    if backend == "torch":
        return network
    members, checkpoints = getattr(network, "networks", None), getattr(network, "checkpoints", None)
    if members is None or checkpoints is None:
        raise ValueError(f"backend {backend} runs an AveragedProbabilities ensemble, not {type(network).__name__}")
    exported = copy.copy(network)
    exported._modules = dict(network._modules)
    exported.networks = torch.nn.ModuleList(
        [ExportedNetwork(member, path, threads, backend, precision) for member, path in zip(members, checkpoints)]
    )
    logger.info("inference on %s in %s (%d threads)", backend, precision, threads or cpu_threads())
    return exported
