"""Training-input throughput: a naive ImageFolder + PIL pipeline against imgclf's decode-once cache.

Both serve the same real photos (default: ../shared/data/food101_mini, 300-512 px JPEGs) at
128 px with the dishes project's augmentation (Resize, horizontal and vertical flips, rotation 10,
ColorJitter(.1, .1, .1, .05), TrivialAugmentWide(31), then float conversion and Normalize), in
batches of 32 through a DataLoader with the same worker count. Printed:

  naive               ImageFolder, decode + resize + augment every image every epoch (PIL)
  imgclf, no cache    the same decoding as the cache, but from disk at every access
  imgclf, epoch 1     building the disk cache (decode + resize once) while serving
  imgclf, epoch 2     augmenting the cached uint8 images
  flips only          the same two imgclf pipelines with a light augmentation (flips only)

Targets: imgclf epoch 2 >= 3x naive, and >= 5x an epoch that decodes from disk.

    python benchmarks/data_pipeline.py [--root DIR] [--workers 0 2] [--size 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from imgclf.data.cache import DecodeCache
from imgclf.data.dataset import DecodedImages, LazyImages
from imgclf.data.folder import FolderSource

MEAN, STD = [0.519, 0.499, 0.469], [0.175, 0.183, 0.197]  # the dishes project's train statistics


def dishes_augmentation() -> list:
    return [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), v2.RandomRotation(degrees=10),
            v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.05),
            v2.TrivialAugmentWide(num_magnitude_bins=31)]


def naive_dataset(root: Path, size: int) -> datasets.ImageFolder:
    transform = v2.Compose([v2.Resize((size, size)), *dishes_augmentation(), v2.ToImage(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    return datasets.ImageFolder(str(root), transform=transform)


def loader(dataset, workers: int) -> DataLoader:
    # the same settings for every pipeline; persistent workers so that steady epochs are timed
    return DataLoader(dataset, batch_size=32, shuffle=True, num_workers=workers, persistent_workers=workers > 0)


def epoch(batches: DataLoader, normalize_batches: bool) -> float:
    """Seconds to serve every image once, in shuffled batches of 32."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    start = time.perf_counter()
    for images, _ in batches:
        if normalize_batches:  # what imgclf's model does on its device
            images = (images.float() / 255 - mean) / std
    return time.perf_counter() - start


def steady_rate(dataset, workers: int, normalize_batches: bool, n: int) -> float:
    """Images/s of the faster of two epochs after a warm-up epoch (workers started)."""
    batches = loader(dataset, workers)
    epoch(batches, normalize_batches)
    return n / min(epoch(batches, normalize_batches) for _ in range(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_root = Path(__file__).resolve().parents[2] / "shared" / "data" / "food101_mini" / "train"
    parser.add_argument("--root", type=Path, default=default_root, help="an ImageFolder-style folder")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)  # per-sample transforms: threads only add overhead; same for both

    source = FolderSource(str(args.root), image_size=args.size, val_fraction=0, test_fraction=0)
    samples = source.scan().samples["train"]
    paths, labels = [p for p, _ in samples], [label for _, label in samples]
    augment = v2.Compose(dishes_augmentation())
    print(f"{len(paths)} images from {args.root}, {args.size} px, dishes augmentation, batch 32")
    n = len(paths)
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as cache_dir:
            naive = steady_rate(naive_dataset(args.root, args.size), workers, False, n)
            lazy = steady_rate(LazyImages(paths, labels, args.size, augment), workers, True, n)
            cache = DecodeCache(cache_dir, mode="disk", progress=False)
            start = time.perf_counter()  # a first run: build the cache, then serve one epoch
            images, _ = cache.load(paths, args.size)
            first = n / (time.perf_counter() - start + epoch(loader(DecodedImages(images, labels, augment), workers), True))
            images, _ = cache.load(paths, args.size)  # a later epoch or run: the memory-mapped file
            second = steady_rate(DecodedImages(images, labels, augment), workers, True, n)
            flips = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()])
            light_lazy = steady_rate(LazyImages(paths, labels, args.size, flips), workers, True, n)
            light = steady_rate(DecodedImages(images, labels, flips), workers, True, n)
        print(f"workers={workers}:")
        for name, rate in (("naive", naive), ("imgclf, no cache", lazy), ("imgclf, epoch 1", first),
                           ("imgclf, epoch 2", second), ("flips only, no cache", light_lazy),
                           ("flips only, cached", light)):
            print(f"  {name:20s} {rate:8.0f} images/s")
        print(f"  ratio epoch 2 / naive                 = {second / naive:5.2f} (target >= 3)")
        print(f"  ratio epoch 2 / decoding from disk    = {second / lazy:5.2f} (target >= 5)")
        print(f"  ratio epoch 2 / epoch 1 (cache build) = {second / first:5.2f}")
        print(f"  flips only: cached / decoding         = {light / light_lazy:5.2f}")


if __name__ == "__main__":
    main()
