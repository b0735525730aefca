"""What changes when training runs on several processes (torchrun): which process writes, and which handlers run."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

__all__ = ["is_main_process", "unwrap", "handlers_for_this_rank", "REPORTING_HANDLERS"]

#: Handlers that only report (console, TensorBoard, progress bar, MLflow): rank 0 runs them for everyone. Not
#: ``MetricsSaver``: it gathers from every rank (and writes on rank 0 by itself), so all ranks must run it.
REPORTING_HANDLERS = ("StatsHandler", "TensorBoardStatsHandler", "ProgressBar", "MLFlowHandler")


def is_main_process() -> bool:
    """True outside distributed runs, and on rank 0 inside them: the process that writes files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            network = network.module
        elif hasattr(network, "_orig_mod"):
            network = network._orig_mod
        else:
            return network


def handlers_for_this_rank(handlers: Sequence) -> list:
    """``handlers`` on rank 0; on other ranks without the reporting ones (:data:`REPORTING_HANDLERS`), chosen by
    type, so the lists in ``train.json`` can change without ``multi_gpu_train.json`` dropping the wrong one.

    Handlers that must run everywhere (LR schedule, validation, early stopping, checkpoints and ``MetricsSaver``:
    they write on rank 0 only by themselves) are kept.
    """
    if is_main_process():
        return list(handlers)
    return [handler for handler in handlers if not _reports(handler)]


def _reports(handler: object) -> bool:
    return any(cls.__name__ in REPORTING_HANDLERS for cls in type(handler).__mro__)
