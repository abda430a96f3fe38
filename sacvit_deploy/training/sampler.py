"""Which samples each process trains on: global batches cut into per-process shards.

An epoch is one permutation of the dataset, drawn from ``(seed, epoch)`` alone, cut into global batches
of ``global_batch`` samples; each global batch is cut into ``accum_steps`` micro-batches and each
micro-batch into ``world`` contiguous shards, one per process. So:

* every sample is drawn exactly once per epoch, by exactly one process (the last global batch may be
  short: it is split as evenly as possible, and a process left with nothing gets one zero-weight copy,
  because every process must run the same number of steps);
* the samples of a global batch are the same whatever the number of processes, so a run resumes on
  any number of processes, and 2 processes compute the same steps as 1 (up to float summation order);
* repeated augmentation (``repeats > 1``, DeiT's RASampler): each drawn image appears ``repeats`` times
  in a row, each copy with its own augmentation, and the epoch is cut back to the dataset's length.

A draw is encoded as ``index + copy * num_samples`` so the dataset can seed each copy differently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, List, Tuple

import numpy as np

# Seeds the permutation: a different stream from the augmentation's (seed, epoch, index).
_PERMUTATION_STREAM = 0x5A3


@dataclass(frozen=True)
class Shard:
    """One process's micro-batch: the draws, and how many of them (from the front) count."""

    draws: Tuple[int, ...]
    weighted: int


class GlobalBatchSampler:
    """A DataLoader ``batch_sampler`` for one process (``rank`` of ``world``); call ``set_epoch``."""

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        world: int = 1,
        rank: int = 0,
        seed: int = 0,
        accum_steps: int = 1,
        repeats: int = 1,
        shuffle: bool = True,
    ) -> None:
        if num_samples < 1 or global_batch < 1 or world < 1 or accum_steps < 1 or repeats < 1:
            raise ValueError("num_samples, global_batch, world, accum_steps and repeats must be >= 1")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        if global_batch % (world * accum_steps):
            raise ValueError(f"global batch {global_batch} does not split into {world} x {accum_steps}")
        self.num_samples, self.global_batch = num_samples, global_batch
        self.world, self.rank, self.seed = world, rank, seed
        self.accum_steps, self.repeats, self.shuffle = accum_steps, repeats, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch (the last one may be short)."""
        return math.ceil(self.num_samples / self.global_batch)

    def __len__(self) -> int:
        return self.steps * self.accum_steps

    def epoch_draws(self) -> np.ndarray:
        """Every draw of this epoch, in global order (identical on every process)."""
        n = self.num_samples
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, _PERMUTATION_STREAM])
            order = rng.permutation(n)
        else:
            order = np.arange(n)
        if self.repeats == 1:
            return order
        copies = np.tile(np.arange(self.repeats), n)
        return (np.repeat(order, self.repeats) + copies * n)[:n]

    def shards(self) -> Iterator[Shard]:
        """This process's micro-batches, in order."""
        draws = self.epoch_draws()
        pieces = self.world * self.accum_steps
        for start in range(0, len(draws), self.global_batch):
            chunk = draws[start : start + self.global_batch]
            # Full batches split exactly; a short last one as evenly as possible, in the same order.
            parts = np.array_split(chunk, pieces)
            for micro in range(self.accum_steps):
                part = parts[micro * self.world + self.rank]
                if len(part):
                    yield Shard(tuple(int(d) for d in part), len(part))
                else:
                    yield Shard((int(chunk[0]),), 0)

    def __iter__(self) -> Iterator[List[int]]:
        for shard in self.shards():
            yield list(shard.draws)


def shard_weights(sampler: GlobalBatchSampler) -> List[int]:
    """How many draws of each micro-batch count in the loss (the rest are zero-weight fillers)."""
    return [s.weighted for s in sampler.shards()]


def eval_shard(num_samples: int, world: int, rank: int) -> range:
    """Contiguous, disjoint, complete: rank r evaluates the r-th block (concatenated in rank order)."""
    bounds = np.linspace(0, num_samples, world + 1).round().astype(int)
    return range(int(bounds[rank]), int(bounds[rank + 1]))
