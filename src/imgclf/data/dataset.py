"""Datasets that serve uint8 images, and the loaders that batch them.

Decoding and resizing JPEGs dominates small-model training on a CPU, so images are normally
decoded once (see ``cache.py``) and served from a uint8 tensor; augmentations run on those
tensors and the model turns uint8 into normalized floats on its own device.

A sample decoded on the fly (``loader.cache=none``) can fail after the check before the run: the
file changed, vanished or was cut since. It then comes back from the loader (or its worker
process) as a :class:`SampleFailure` in place of the sample, and the loader in the main process
stops with a :class:`SampleError` naming it (``dataset.bad_files=stop``) or drops it from its batch
and counts it (``skip``): nothing is put in its place.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from imgclf.data.batch_augment import batch_transform
from imgclf.data.cache import decode
from imgclf.data.images import Transform, serve
from imgclf.data.sampler import SEED_RANGE, EpochBatchSampler
from imgclf.errors import DataError
from imgclf.filenames import shown

log = logging.getLogger(__name__)

Sample = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class SampleFailure:
    """A sample that could not be loaded when it was served (plain values: it may come from a worker process)."""

    index: int
    path: str
    reason: str


class SampleError(DataError):
    """A sample that passed the check before the run failed to load when it was served (dataset.bad_files=stop)."""


def failure_message(failure: SampleFailure, split: str, epoch: int | None) -> str:
    """What failed, where and when, and what to do (the message of a :class:`SampleError`)."""
    when = f" in epoch {epoch}" if epoch is not None else ""
    reason = failure.reason.removesuffix("; remove or replace the file")  # said below
    return (
        f"[{split or 'data'}] sample {failure.index} ({failure.path}) could not be loaded{when}: {reason}. "
        "It was readable when the run checked its files, so it changed, vanished or was cut since (with "
        "loader.cache=none every epoch reads it again). Fix or remove the file, or set dataset.bad_files=skip "
        "to leave such samples out; then run the same command again (training resumes from the experiment's "
        "last.pt, the last finished epoch, when one was written)"
    )


class _Served(Dataset):
    """Samples ``(uint8 image (3, H, W), label)``, augmented a whole batch at a time when possible.

    The DataLoader asks for a batch's indices at once (``__getitems__``); if the augmentation has
    a batch version (``batch_augment.batch_transform``), the batch's images are stacked and
    augmented together, each with its own random parameters. Otherwise each image goes through
    the transform on its own, as a Pillow image.
    """

    def __init__(
        self,
        labels: Sequence[int],
        transform: Transform | None,
        batched: bool,
        *,
        split: str = "",
        bad_files: str = "stop",
    ) -> None:
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.transform = transform
        self.batch_op, self.why_per_image = batch_transform(transform) if batched else (None, "batched=False")
        self.split, self.bad_files = split, bad_files  # named in errors; what a loader does with a failed sample
        self.dropped: set[int] = set()  # samples a loader dropped so far (in the main process)

    def _pixels(self, indices: list[int]) -> np.ndarray:
        """uint8 (len(indices), H, W, 3)."""
        raise NotImplementedError

    def _load(self, indices: list[int]) -> tuple[np.ndarray, list[int], list[SampleFailure]]:
        """The pixels of the samples of ``indices`` that loaded, their indices, and the failures."""
        return self._pixels(indices), list(indices), []

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        item = self.__getitems__([index])[0]
        if isinstance(item, SampleFailure):  # one sample asked for: there is nothing to drop it from
            raise SampleError(failure_message(item, self.split, None))
        return item

    def __getitems__(self, indices: list[int]) -> list[Sample | SampleFailure]:
        """The samples of ``indices`` that loaded, then a :class:`SampleFailure` for each that did not
        (:func:`collate` batches the first and hands the others on)."""
        pixels, kept, failed = self._load(indices)
        if not kept:
            return list(failed)
        if self.batch_op is not None:
            images = self._augment(pixels, None).unbind(0)
        else:
            images = [serve(image, self.transform) for image in pixels]
        return [*zip(images, self.labels[kept].unbind(0), strict=True), *failed]

    def batch(self, indices: list[int], generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented uint8 images (B, 3, H, W) and labels of ``indices``, as one batch (needs
        ``batch_op``); random parameters come from ``generator`` (None: torch's global one).

        Raises:
            SampleError: a sample failed to load (only decoded images, which cannot fail, are served this way).
        """
        pixels, _, failed = self._load(indices)
        if failed:
            raise SampleError(failure_message(failed[0], self.split, None))
        return self._augment(pixels, generator), self.labels[indices]

    def _augment(self, pixels: np.ndarray, generator: torch.Generator | None) -> torch.Tensor:
        return self.batch_op(torch.from_numpy(pixels).permute(0, 3, 1, 2), generator).contiguous()

    def served_index(self, position: int) -> int:
        """The index of the sample at ``position`` of an in-order pass that left out :attr:`dropped`
        (e.g. a validation output, to draw its image)."""
        for index in sorted(self.dropped):
            if index > position:
                break
            position += 1
        return position


class DecodedImages(_Served):
    """Samples ``(uint8 image (3, H, W), label)`` from images decoded in advance.

    Args:
        images: uint8 array of shape (N, H, W, 3) (possibly memory-mapped).
        labels: class index of each served image.
        transform: augmentation, applied to each image as it is served; ``None`` for none.
        rows: the row of ``images`` behind each served image (default: all rows in order), so
            that skipped files need no copy of a memory-mapped array.
        batched: augment whole batches when the transform allows it (see :class:`_Served`).
        split, bad_files: as for :class:`LazyImages` (decoded images cannot fail to load).
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        labels: Sequence[int],
        transform: Transform | None = None,
        rows: Sequence[int] | None = None,
        batched: bool = True,
        *,
        split: str = "",
        bad_files: str = "stop",
    ) -> None:
        super().__init__(labels, transform, batched, split=split, bad_files=bad_files)
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
        split: the split's name, for errors.
        bad_files: what a loader does with a sample that fails to load: ``stop`` or ``skip`` (drop it).
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int],
        image_size: int,
        transform: Transform | None = None,
        batched: bool = True,
        resize: str = "squash",
        *,
        split: str = "",
        bad_files: str = "stop",
    ) -> None:
        super().__init__(labels, transform, batched, split=split, bad_files=bad_files)
        self.paths = list(paths)
        self.image_size = image_size
        self.resize = resize

    def _load(self, indices: list[int]) -> tuple[np.ndarray, list[int], list[SampleFailure]]:
        rows, kept, failed = [], [], []
        for i in indices:
            try:
                rows.append(decode(self.paths[i], self.image_size, self.resize))
                kept.append(i)
            except DataError as exc:
                failed.append(SampleFailure(i, self.paths[i], str(exc).removeprefix(f"{self.paths[i]}: ")))
            except OSError as exc:  # vanished or unreadable since the check before the run
                failed.append(SampleFailure(i, self.paths[i], f"cannot be read ({exc.strerror or exc})"))
        side = self.image_size
        return (np.stack(rows) if rows else np.empty((0, side, side, 3), np.uint8)), kept, failed


class BatchLoader:
    """Batches of an in-memory dataset that augments whole batches, made by threads.

    With decoded images in memory and a batch augmentation (compiled loops that release Python's
    lock), threads share the images and need no copy of each batch between processes: on 2 CPU
    cores, two threads serve about twice as many images per second as two worker processes.
    ``threads`` of 0 makes each batch when it is asked for. Each batch draws its random
    parameters from its own generator, seeded by (seed, epoch, batch number): the same batches
    whatever the thread count, and a run resumed mid-epoch sees what it would have seen.
    """

    def __init__(
        self, dataset: _Served, batch_sampler: EpochBatchSampler, *, threads: int = 0, pin_memory: bool = False
    ) -> None:
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
        if sampler.world_size > 1:  # each rank augments its own slice of the global batch with its own draws
            seed = seed * 1_009 + sampler.rank
        images, labels = self.dataset.batch(indices, torch.Generator().manual_seed(seed % SEED_RANGE))
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


def collate(
    items: list[Sample | SampleFailure],
) -> tuple[torch.Tensor | None, torch.Tensor | None, list[SampleFailure]]:
    """A batch of the samples that loaded (None, None when none did) and the failures, for the main process."""
    failed = [item for item in items if isinstance(item, SampleFailure)]
    good = [item for item in items if not isinstance(item, SampleFailure)]
    if not good:
        return None, None, failed
    return torch.stack([image for image, _ in good]), torch.stack([label for _, label in good]), failed


@dataclass
class Dropped:
    """Samples dropped (``dataset.bad_files=skip``) in one pass of a loader."""

    samples: int = 0
    batches: int = 0  # batches left with no sample
    first: list[SampleFailure] = field(default_factory=list)  # a few, for the log


class EpochLoader(DataLoader):
    """A DataLoader over an :class:`EpochBatchSampler` that the training loop can set to an epoch.

    Over a served image dataset, a sample that fails to load stops the pass with a :class:`SampleError`
    (the dataset's ``bad_files`` is ``stop``) or is dropped from its batch and counted (``skip``); a batch
    left with no sample is skipped, or, with ``empty_batches``, handed on empty so that the training loop
    counts it (a run resumed in the middle of the epoch then starts at the right batch).
    """

    batch_sampler: EpochBatchSampler

    def __init__(self, *args: Any, empty_batches: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.empty_batches = empty_batches
        self.dropped = Dropped()

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order; skip the batches already trained on."""
        self.batch_sampler.set_epoch(epoch, start_batch)

    def __iter__(self) -> Iterator[Any]:
        if not isinstance(self.dataset, _Served):
            yield from super().__iter__()
            return
        epoch, self.dropped = self.batch_sampler.epoch + 1, Dropped()
        for images, labels, failed in super().__iter__():
            if failed:
                self._drop(failed, epoch)
            if images is None:
                self.dropped.batches += 1
                if not self.empty_batches:
                    continue
                images, labels = torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
            yield images, labels
        if self.dropped.samples:
            first = self.dropped.first[0]
            log.warning(
                "epoch %d: %d %s sample(s) could not be loaded and were left out (dataset.bad_files=skip)%s, "
                "e.g. sample %d (%s): %s",
                epoch,
                self.dropped.samples,
                self.dataset.split or "data",
                f"; {self.dropped.batches} batch(es) had no sample left" if self.dropped.batches else "",
                first.index,
                shown(first.path),
                first.reason,
            )

    def _drop(self, failed: list[SampleFailure], epoch: int) -> None:
        dataset = self.dataset
        assert isinstance(dataset, _Served)
        if dataset.bad_files != "skip":
            raise SampleError(failure_message(failed[0], dataset.split, epoch))
        for failure in failed:
            if failure.index not in dataset.dropped:  # named once per run; every epoch counts it
                log.warning(
                    "[%s] sample %d (%s) could not be loaded in epoch %d and is left out (dataset.bad_files=skip): %s",
                    dataset.split or "data",
                    failure.index,
                    failure.path,
                    epoch,
                    failure.reason,
                )
            dataset.dropped.add(failure.index)
        self.dropped.samples += len(failed)
        self.dropped.first += failed[: max(0, 3 - len(self.dropped.first))]

    def drop_metrics(self) -> dict[str, float]:
        """``<split>/dropped_samples`` (and ``<split>/dropped_batches``) of the latest pass, when there were any."""
        split = getattr(self.dataset, "split", "") or "data"
        metrics = {f"{split}/dropped_samples": self.dropped.samples} if self.dropped.samples else {}
        if self.dropped.batches:
            metrics[f"{split}/dropped_batches"] = self.dropped.batches
        return metrics


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    weights: Sequence[float] | None = None,
    timeout: float = 0,
    empty_batches: bool = False,
    world_size: int = 1,
    rank: int = 0,
) -> EpochLoader | BatchLoader:
    """Batches of ``dataset`` in the order of an :class:`EpochBatchSampler`.

    Decoded images with a batch augmentation get a :class:`BatchLoader` (``num_workers``
    threads); anything else a DataLoader (``num_workers`` processes). ``timeout``: seconds to wait
    for a batch from a worker process before failing (0: forever). ``empty_batches``: hand on a batch
    whose samples all failed to load (and were dropped) as an empty one, for the training loop to count.
    ``world_size``, ``rank``: this process's share of the data (see :class:`EpochBatchSampler`).
    """
    sampler = EpochBatchSampler(
        len(dataset), batch_size, shuffle=shuffle, seed=seed, weights=weights, world_size=world_size, rank=rank
    )
    if isinstance(dataset, DecodedImages) and dataset.batch_op is not None:
        return BatchLoader(dataset, sampler, threads=num_workers, pin_memory=pin_memory)
    return EpochLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed % SEED_RANGE),
        timeout=timeout if num_workers > 0 else 0,
        empty_batches=empty_batches,
        collate_fn=collate if isinstance(dataset, _Served) else None,
    )
