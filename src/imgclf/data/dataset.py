"""Datasets that serve uint8 images, and the loaders that batch them.

Decoding and resizing JPEGs dominates small-model training on a CPU, so images are normally
decoded once (see ``cache.py``) and served from a uint8 tensor; augmentations run on those
tensors and the model turns uint8 into normalized floats on its own device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.v2 import functional as F

from imgclf.data.cache import decode
from imgclf.errors import DataError

Transform = Callable[[Any], Any]


def serve(image: np.ndarray, transform: Transform | None) -> torch.Tensor:
    """Turn one (H, W, 3) uint8 image into the (3, H, W) uint8 tensor a batch is made of.

    Augmentations see a Pillow image, as in torchvision's own recipes: Pillow runs flips,
    rotations and colour changes in C on uint8 (about twice as fast as the same v2 transforms
    on tensors), and the results equal those of a pipeline that augments freshly decoded files.
    A transform may also return a tensor (e.g. one that ends with ``v2.ToImage()``).
    """
    if transform is None:
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    out = transform(Image.fromarray(np.asarray(image)))
    if isinstance(out, Image.Image):
        return F.pil_to_tensor(out.convert("RGB") if out.mode != "RGB" else out)
    if not isinstance(out, torch.Tensor) or out.dtype != torch.uint8 or out.ndim != 3:
        raise TypeError("augmentation must return a Pillow image or a (3, H, W) uint8 tensor: "
                        "leave float conversion and Normalize out (the model normalizes its inputs)")
    return out


class DecodedImages(Dataset):
    """Samples ``(uint8 image (3, H, W), label)`` from images decoded in advance.

    Args:
        images: uint8 array of shape (N, H, W, 3) (possibly memory-mapped).
        labels: class index of each served image.
        transform: augmentation, applied to each image as it is served; ``None`` for none.
        rows: the row of ``images`` behind each served image (default: all rows in order), so
            that skipped files need no copy of a memory-mapped array.
    """

    def __init__(self, images: torch.Tensor | np.ndarray, labels: Sequence[int], transform: Transform | None = None,
                 rows: Sequence[int] | None = None) -> None:
        self.images = images.numpy() if isinstance(images, torch.Tensor) else images
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.rows = list(rows) if rows is not None else list(range(len(self.labels)))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return serve(self.images[self.rows[index]], self.transform), self.labels[index]


class LazyImages(Dataset):
    """Samples ``(uint8 image (3, H, W), label)`` decoded from disk on every access (no cache).

    Args:
        paths: image files.
        labels: class index of each image.
        image_size: working size (the same decoding as the cache).
        transform: augmentation, applied to each image as it is served; ``None`` for none.
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int], image_size: int,
                 transform: Transform | None = None) -> None:
        self.paths = list(paths)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.image_size = image_size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            image = decode(self.paths[index], self.image_size)
        except (DataError, OSError) as exc:
            raise DataError(f"sample {index} ({self.paths[index]}) failed: {exc}") from exc
        return serve(image, self.transform), self.labels[index]


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


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0,
                pin_memory: bool = False, weights: Sequence[float] | None = None, timeout: float = 0) -> DataLoader:
    """A DataLoader over ``dataset`` driven by an :class:`EpochBatchSampler`.

    ``timeout``: seconds to wait for a batch from a worker process before failing (0: forever).
    """
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed, weights=weights)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed),
                      timeout=timeout if num_workers > 0 else 0)
