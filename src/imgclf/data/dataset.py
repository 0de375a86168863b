"""Decode each image once, keep it as uint8, and augment from there.

Decoding and resizing JPEGs dominates small-model training on a CPU, so every image is decoded
and resized once to ``image_size`` and kept in memory as a uint8 tensor. Augmentations run on
those tensors; the model turns uint8 into normalized floats on its own device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.v2 import functional as F
from tqdm import tqdm

from imgclf.data.images import load_image

log = logging.getLogger(__name__)


def decode(path: str, image_size: int) -> torch.Tensor:
    """Load one image and resize it to a square uint8 tensor of shape (3, size, size)."""
    img = load_image(path).resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=None)
    return F.pil_to_tensor(img)


def decode_all(paths: Sequence[str], image_size: int, *, desc: str = "decode", progress: bool = True) -> torch.Tensor:
    """Decode every path once into one (N, 3, size, size) uint8 tensor."""
    out = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)
    for i, path in enumerate(tqdm(paths, desc=desc, unit="img", disable=not progress or len(paths) < 500,
                                  leave=False)):
        out[i] = decode(path, image_size)
    return out


class DecodedImages(Dataset):
    """Samples ``(uint8 image, label)`` from images decoded in advance.

    Args:
        images: uint8 tensor of shape (N, 3, H, W).
        labels: class index of each image.
        transform: applied to each uint8 image when it is served (augmentation); ``None`` for none.
    """

    def __init__(self, images: torch.Tensor, labels: Sequence[int],
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.images = images
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of indices whose order depends only on (seed, epoch), so a run resumed in the
    middle of an epoch sees exactly the batches it would have seen.

    Args:
        size: number of samples.
        batch_size: samples per batch.
        shuffle: reshuffle every epoch.
        seed: base seed of the shuffling.
    """

    def __init__(self, size: int, batch_size: int, *, shuffle: bool = True, seed: int = 0) -> None:
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order and skip the batches already trained on."""
        self.epoch, self.start_batch = epoch, start_batch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
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
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``dataset`` driven by an :class:`EpochBatchSampler`."""
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed))
