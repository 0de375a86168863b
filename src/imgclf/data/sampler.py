"""The seeded order in which a split is read, batch by batch, shared out between the ranks of a distributed run."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

# torch generators take seeds below 2**64: derived seeds are kept below 2**63, so any `seed` trains (a seed
# under ~9 million derives the same numbers as before the cut, so its runs and their resumes are unchanged)
SEED_RANGE = 2**63


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of indices whose order depends only on (seed, epoch), so a run resumed in the
    middle of an epoch sees exactly the batches it would have seen.

    With several processes (``world_size`` > 1), every rank draws the same order and takes its own slice:
    when shuffling (training), each global batch of ``batch_size * world_size`` indices is cut into
    ``world_size`` consecutive pieces as equal as they can be (rank 0 the front), so every rank steps the
    same number of times and together they see what one process with the global batch would; a last
    global batch too small to give every rank two samples is dropped (BatchNorm cannot train on one).
    Without shuffling (validation), each rank takes a consecutive share of the whole split, so every sample
    is seen once.

    Args:
        size: number of samples.
        batch_size: samples per batch (of this rank).
        shuffle: reshuffle every epoch.
        seed: base seed of the shuffling.
        weights: sampling weight of each sample (drawn with replacement); None for a permutation.
        world_size: processes sharing the data.
        rank: this process's place among them.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        weights: Sequence[float] | None = None,
        world_size: int = 1,
        rank: int = 0,
    ) -> None:
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
        self.world_size, self.rank = world_size, rank
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order and skip the batches already trained on."""
        self.epoch, self.start_batch = epoch, start_batch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) % SEED_RANGE)
        if self.weights is not None:  # class-balanced: draw with replacement by sample weight
            return torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        order = self._order().tolist()
        if not self.shuffle and self.world_size > 1:
            order = order[_share(len(order), self.world_size, self.rank)]
            for b in range(self.start_batch, -(-len(order) // self.batch_size)):
                yield order[b * self.batch_size : (b + 1) * self.batch_size]
            return
        step = self.batch_size * self.world_size
        for b in range(self.start_batch, len(self)):
            batch = order[b * step : (b + 1) * step]
            yield batch[_share(len(batch), self.world_size, self.rank)]

    def __len__(self) -> int:
        if not self.shuffle and self.world_size > 1:
            return -(-len(range(self.size)[_share(self.size, self.world_size, self.rank)]) // self.batch_size)
        full, rest = divmod(self.size, self.batch_size * self.world_size)
        # A trailing batch of one image (on any rank) is dropped when shuffling: BatchNorm cannot train on it.
        keep = rest >= 2 * self.world_size or (rest == 1 and not self.shuffle)
        return full + int(keep)


def _share(total: int, parts: int, index: int) -> slice:
    """Part ``index`` of ``total`` items cut into ``parts`` consecutive pieces as equal as they can be."""
    base, extra = divmod(total, parts)
    start = index * base + min(index, extra)
    return slice(start, start + base + (1 if index < extra else 0))
