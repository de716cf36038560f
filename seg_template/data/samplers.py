"""Samplers that make a run reproducible and multi-process evaluation exact.

- ``SeededTrainSampler``: shuffles with ``(seed, epoch)`` and hands each index to the dataset together with
  the seed and epoch, so that the dataset seeds its albumentations pipeline per sample. Albumentations keeps
  its own random generator, which ``seed_everything`` does not reach; seeding it per *sample* (rather than
  per worker process) makes the augmentation of sample ``i`` in epoch ``e`` one and the same whatever the
  number of loader workers, persistent or not, and whatever the number of DDP processes. ``skip`` leaves out
  the start of the next epoch's order once: a fit resumed in the middle of an epoch takes the rest of it.
- ``ShardSampler``: rank ``r`` of ``world`` reads indices ``r, r + world, ...``: every sample exactly once
  over all ranks, none repeated. Lightning's DistributedSampler pads the split with repeats until it
  divides evenly, which counts those samples twice in a confusion matrix summed over the processes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
from torch.utils.data import DistributedSampler, Sampler

from seg_template.errors import ConfigError


class SeededIndex(NamedTuple):
    """A dataset index that carries the seed of its augmentation: ``dataset[SeededIndex(i, seed, epoch)]``."""

    index: int
    seed: int
    epoch: int

    def generators(self) -> tuple[np.random.Generator, random.Random]:
        """A numpy and a Python generator seeded by ``(seed, epoch, index)`` (albumentations uses both)."""
        rng = np.random.default_rng([self.seed % 2**32, self.epoch, self.index])
        return rng, random.Random(int(rng.integers(2**63)))


def seed_transform(transform: Any, key: SeededIndex) -> None:
    """Re-seed an albumentations pipeline for one sample; other callables are left alone (they draw from
    their own generators, or from numpy's global one, which Lightning seeds per worker)."""
    set_random_state = getattr(transform, "set_random_state", None)
    if callable(set_random_state):
        set_random_state(*key.generators())
    elif type(transform).__module__.startswith("albumentations"):  # an albumentations without its own RNG API
        raise ConfigError("this albumentations has no Compose.set_random_state, so a seed cannot reproduce the "
                          "augmentation: pip install -U 'albumentations>=2'")


class SeededTrainSampler(DistributedSampler):
    """Shuffled training indices as ``SeededIndex`` items; ``set_epoch`` reshuffles (Lightning calls it
    at the start of every epoch).

    With ``num_replicas=1`` it is a plain seeded shuffle (no padding). With ``num_replicas=N`` it is torch's
    DistributedSampler: every rank draws the same permutation from ``(seed, epoch)`` and takes its share;
    the permutation is padded with repeats so that all ranks run the same number of steps, which DDP's
    gradient all-reduce needs (training, unlike evaluation, does not mind a repeated sample).
    """

    def __init__(self, dataset: Any, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=False)
        self.skip = 0  # indices of this rank's order to leave out, once, at the next iteration

    def __iter__(self) -> Iterator[SeededIndex]:  # type: ignore[override]
        skip, self.skip = self.skip, 0
        for index in list(super().__iter__())[skip:]:
            yield SeededIndex(int(index), self.seed, self.epoch)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + num_replicas, ...`` of a split of ``length`` samples: over all ranks every
    index exactly once. Ranks may get one sample fewer than others; evaluation does not need equal steps."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"ShardSampler needs 0 <= rank < num_replicas, got rank {rank} of {num_replicas}")
        self.length, self.num_replicas, self.rank = int(length), int(num_replicas), int(rank)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.num_replicas))
