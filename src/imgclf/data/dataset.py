"""Datasets that serve uint8 images, and the loaders that batch them.

Decoding and resizing JPEGs dominates small-model training on a CPU, so images are normally
decoded once (see ``cache.py``) and served from a uint8 tensor; augmentations run on those
tensors and the model turns uint8 into normalized floats on its own device.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from imgclf.data.batch_augment import batch_transform
from imgclf.data.cache import decode
from imgclf.data.images import Transform, serve
from imgclf.errors import DataError


class _Served(Dataset):
    """Samples ``(uint8 image (3, H, W), label)``, augmented a whole batch at a time when possible.

    The DataLoader asks for a batch's indices at once (``__getitems__``); if the augmentation has
    a batch version (``batch_augment.batch_transform``), the batch's images are stacked and
    augmented together, each with its own random parameters. Otherwise each image goes through
    the transform on its own, as a Pillow image.
    """

    def __init__(self, labels: Sequence[int], transform: Transform | None, batched: bool) -> None:
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.transform = transform
        self.batch_op, self.why_per_image = batch_transform(transform) if batched else (None, "batched=False")

    def _pixels(self, indices: list[int]) -> np.ndarray:
        """uint8 (len(indices), H, W, 3)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self.batch_op is not None:
            images = self.batch(indices)[0].unbind(0)
        else:
            images = [serve(image, self.transform) for image in self._pixels(indices)]
        return list(zip(images, self.labels[indices].unbind(0), strict=True))

    def batch(self, indices: list[int], generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented uint8 images (B, 3, H, W) and labels of ``indices``, as one batch (needs
        ``batch_op``); random parameters come from ``generator`` (None: torch's global one)."""
        pixels = torch.from_numpy(self._pixels(indices)).permute(0, 3, 1, 2)
        return self.batch_op(pixels, generator).contiguous(), self.labels[indices]


class DecodedImages(_Served):
    """Samples ``(uint8 image (3, H, W), label)`` from images decoded in advance.

    Args:
        images: uint8 array of shape (N, H, W, 3) (possibly memory-mapped).
        labels: class index of each served image.
        transform: augmentation, applied to each image as it is served; ``None`` for none.
        rows: the row of ``images`` behind each served image (default: all rows in order), so
            that skipped files need no copy of a memory-mapped array.
        batched: augment whole batches when the transform allows it (see :class:`_Served`).
    """

    def __init__(self, images: torch.Tensor | np.ndarray, labels: Sequence[int], transform: Transform | None = None,
                 rows: Sequence[int] | None = None, batched: bool = True) -> None:
        super().__init__(labels, transform, batched)
        self.images = images.numpy() if isinstance(images, torch.Tensor) else images
        self.rows = np.asarray(rows if rows is not None else range(len(self.labels)), dtype=np.int64)

    def _pixels(self, indices: list[int]) -> np.ndarray:
        return self.images[self.rows[indices]]


class LazyImages(_Served):
    """Samples ``(uint8 image (3, H, W), label)`` decoded from disk on every access (no cache).

    Args:
        paths: image files.
        labels: class index of each image.
        image_size: working size (the same decoding as the cache).
        transform: augmentation, applied to each image as it is served; ``None`` for none.
        batched: augment whole batches when the transform allows it (see :class:`_Served`).
        resize: how each image becomes the square (``images.RESIZE_MODES``), as in the cache.
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int], image_size: int,
                 transform: Transform | None = None, batched: bool = True, resize: str = "squash") -> None:
        super().__init__(labels, transform, batched)
        self.paths = list(paths)
        self.image_size = image_size
        self.resize = resize

    def _pixels(self, indices: list[int]) -> np.ndarray:
        return np.stack([self._decode(i) for i in indices])

    def _decode(self, index: int) -> np.ndarray:
        try:
            return decode(self.paths[index], self.image_size, self.resize)
        except (DataError, OSError) as exc:
            raise DataError(f"sample {index} ({self.paths[index]}) failed: {exc}") from exc


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of indices whose order depends only on (seed, epoch), so a run resumed in the
    middle of an epoch sees exactly the batches it would have seen.

    Args:
        size: number of samples.
        batch_size: samples per batch.
        shuffle: reshuffle every epoch.
        seed: base seed of the shuffling.
        weights: sampling weight of each sample (drawn with replacement); None for a permutation.
    """

    def __init__(self, size: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 weights: Sequence[float] | None = None) -> None:
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order and skip the batches already trained on."""
        self.epoch, self.start_batch = epoch, start_batch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:  # class-balanced: draw with replacement by sample weight
            return torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        order = self._order().tolist()
        for b in range(self.start_batch, len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]

    def __len__(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        # A trailing batch of one image is dropped when shuffling: BatchNorm cannot train on it.
        return full + (1 if rest > 1 or (rest == 1 and not self.shuffle) else 0)


class BatchLoader:
    """Batches of an in-memory dataset that augments whole batches, made by threads.

    With decoded images in memory and a batch augmentation (compiled loops that release Python's
    lock), threads share the images and need no copy of each batch between processes: on 2 CPU
    cores, two threads serve about twice as many images per second as two worker processes.
    ``threads`` of 0 makes each batch when it is asked for. Each batch draws its random
    parameters from its own generator, seeded by (seed, epoch, batch number): the same batches
    whatever the thread count, and a run resumed mid-epoch sees what it would have seen.
    """

    def __init__(self, dataset: _Served, batch_sampler: EpochBatchSampler, *, threads: int = 0,
                 pin_memory: bool = False) -> None:
        self.dataset, self.batch_sampler = dataset, batch_sampler
        self.threads, self.pin_memory = threads, pin_memory

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order (and batch augmentation parameters); skip the batches already trained on."""
        self.batch_sampler.set_epoch(epoch, start_batch)

    def _make(self, number: int, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        sampler = self.batch_sampler
        seed = (sampler.seed * 1_000_003 + sampler.epoch) * 1_000_003 + number
        images, labels = self.dataset.batch(indices, torch.Generator().manual_seed(seed))
        if self.pin_memory:
            images, labels = images.pin_memory(), labels.pin_memory()
        return images, labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        jobs = enumerate(self.batch_sampler, start=self.batch_sampler.start_batch)
        if self.threads == 0:
            for number, indices in jobs:
                yield self._make(number, indices)
            return
        pending: deque[Future] = deque()
        with ThreadPoolExecutor(self.threads, thread_name_prefix="imgclf-batches") as pool:
            try:
                for number, indices in jobs:
                    pending.append(pool.submit(self._make, number, indices))
                    if len(pending) > 2 * self.threads:  # a bounded read-ahead
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:  # stopped early (or failed): drop the batches not started
                for future in pending:
                    future.cancel()


class EpochLoader(DataLoader):
    """A DataLoader over an :class:`EpochBatchSampler` that the training loop can set to an epoch."""

    batch_sampler: EpochBatchSampler

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order; skip the batches already trained on."""
        self.batch_sampler.set_epoch(epoch, start_batch)


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0,
                pin_memory: bool = False, weights: Sequence[float] | None = None,
                timeout: float = 0) -> EpochLoader | BatchLoader:
    """Batches of ``dataset`` in the order of an :class:`EpochBatchSampler`.

    Decoded images with a batch augmentation get a :class:`BatchLoader` (``num_workers``
    threads); anything else a DataLoader (``num_workers`` processes). ``timeout``: seconds to wait
    for a batch from a worker process before failing (0: forever).
    """
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed, weights=weights)
    if isinstance(dataset, DecodedImages) and dataset.batch_op is not None:
        return BatchLoader(dataset, sampler, threads=num_workers, pin_memory=pin_memory)
    return EpochLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed),
                      timeout=timeout if num_workers > 0 else 0)
