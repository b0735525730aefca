"""Positive-share scheduling: how many images with pneumothorax each training epoch sees.

The winning SIIM solution lowered the share of positive images per epoch from 0.8 to 0.4 (the data set has
22%): early epochs learn what a pneumothorax looks like, later ones learn to keep empty images empty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from scripts.utils.flags import switches

__all__ = ["PositiveShareSampler", "SeededDataset", "positive_share"]


def positive_share(epoch: int, start: float, end: float, epochs: int) -> float:
    """Share of positives in 1-based ``epoch``: linear from ``start`` (epoch 1) to ``end`` (epoch ``epochs`` on)."""
    if epochs <= 1:
        return end
    progress = min(max(epoch - 1, 0) / (epochs - 1), 1.0)
    return start + (end - start) * progress


class PositiveShareSampler(DistributedSampler):
    """Draws each epoch's images so that a scheduled share of them is positive; distributed-aware.

    Positives and negatives are each drawn without replacement, cycling through fresh permutations when an epoch
    needs more of one kind than there are. The epoch's draw is the same on every rank (seeded by ``seed`` and the
    epoch) and each rank takes its own slice, so ranks never overlap. It derives from ``DistributedSampler``, so
    MONAI's trainer calls :meth:`set_epoch` at the start of each epoch, with or without distribution.

    Args:
        data: the datalist (items with a bool ``"positive"``) or a sequence of bools. If no item says whether it is
            positive (e.g. MONAI Label's items), epochs are plain shuffles.
        start_share, end_share: share of positives in the first epoch and from ``schedule_epochs`` on.
        schedule_epochs: epochs over which the share moves linearly from start to end.
        num_samples: images per epoch over all ranks (default: the data set's size).
        num_replicas, rank: as ``DistributedSampler``; default: the process group's, or 1 and 0 without one.
        seed: base seed.
        keyed: yield ``(sample_seed, index)`` pairs instead of indices, for :class:`SeededDataset`: each draw of an
            image gets its own seed for its random transforms, fixed by ``seed``, the epoch and its position in
            the epoch.
    """

    @switches(keyed="keyed")
    def __init__(
        self,
        data: Sequence,
        start_share: float = 0.8,
        end_share: float = 0.4,
        schedule_epochs: int = 10,
        num_samples: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        keyed: bool = False,
    ) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if distributed else 1)
        rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        super().__init__(data, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        for name, share in (("start_share", start_share), ("end_share", end_share)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {share}")
        flags = [item if isinstance(item, bool) else item.get("positive") for item in data]
        self.scheduled = any(flag is not None for flag in flags)
        self.positives = [i for i, flag in enumerate(flags) if flag]
        self.negatives = [i for i, flag in enumerate(flags) if not flag]
        if self.scheduled and not self.positives:
            raise ValueError("PositiveShareSampler: the data holds no positive image")
        self.start_share, self.end_share, self.schedule_epochs = start_share, end_share, schedule_epochs
        self.total_size = num_samples if num_samples is not None else len(flags)
        self.num_samples = math.ceil(self.total_size / self.num_replicas)
        self.epoch = 1
        self.keyed = keyed

    def share(self) -> float:
        """The positive share of the current epoch."""
        return positive_share(self.epoch, self.start_share, self.end_share, self.schedule_epochs)

    def epoch_indices(self) -> list[int]:
        """This epoch's draw over all ranks (length ``num_samples * num_replicas``)."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.scheduled:
            n_positive = round(self.share() * self.total_size) if self.negatives else self.total_size
            chosen = _draw(self.positives, n_positive, generator) + _draw(
                self.negatives, self.total_size - n_positive, generator
            )
        else:
            chosen = _draw(list(range(len(self.dataset))), self.total_size, generator)
        order = torch.randperm(len(chosen), generator=generator).tolist()
        indices = [chosen[i] for i in order]
        padding = self.num_samples * self.num_replicas - len(indices)
        return indices + indices[:padding]

    def sample_seeds(self) -> list[int]:
        """One seed per position of this epoch's draw over all ranks (a separate stream: the draw is unchanged)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        return rng.integers(0, 2**32, size=self.num_samples * self.num_replicas, dtype=np.uint64).tolist()

    def __iter__(self):
        indices = self.epoch_indices()
        keys = list(zip(self.sample_seeds(), indices)) if self.keyed else indices
        return iter(keys[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


def _draw(pool: list[int], count: int, generator: torch.Generator) -> list[int]:
    """``count`` items of ``pool``: whole permutations, then part of one more."""
    if count <= 0:
        return []
    if not pool:
        raise ValueError("cannot draw from an empty group of images")
    out: list[int] = []
    while len(out) < count:
        out += [pool[i] for i in torch.randperm(len(pool), generator=generator).tolist()]
    return out[:count]


class SeededDataset(Dataset):
    """Reseed the random transforms of ``dataset`` for each item from the key it is asked for.

    Asked for ``(sample_seed, index)`` (what ``PositiveShareSampler(keyed=True)`` yields), it calls
    ``dataset.transform.set_random_state(sample_seed)`` and returns ``dataset[index]``; a plain index passes
    through unchanged. Each draw of an image is then augmented the same way whichever loader worker makes it, so
    training batches depend only on the seed: not on the number of workers, nor on whether workers persist
    between epochs, nor on a resume. Each worker process has its own copy of the transforms; do not share one
    instance between threads.
    """

    def __init__(self, dataset: Dataset) -> None:
        if not hasattr(getattr(dataset, "transform", None), "set_random_state"):
            raise TypeError(f"SeededDataset: {type(dataset).__name__} has no randomizable ``transform`` to seed")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            sample_seed, index = key
            self.dataset.transform.set_random_state(seed=int(sample_seed))
            return self.dataset[index]
        return self.dataset[key]
