"""Training-input throughput: a naive ImageFolder + PIL pipeline against imgclf's decode-once cache.

Both serve the same real photos (default: ../shared/data/food101_mini, 300-512 px JPEGs) at
128 px with the dishes project's augmentation (Resize, horizontal and vertical flips, rotation 10,
ColorJitter(.1, .1, .1, .05), TrivialAugmentWide(31), then float conversion and Normalize), in
batches of 32 with the same worker count. Printed:

  naive               ImageFolder, decode + resize + augment every image every epoch (PIL, per image)
  imgclf, no cache    the same decoding as the cache, from disk at every access (worker processes),
                      then imgclf's batch augmentation
  imgclf, epoch 1     building the disk cache (decode + resize once) while serving
  imgclf, epoch 2     batch augmentation of the cached uint8 images (worker threads)
  flips only          the same two imgclf pipelines with a light augmentation (flips only)

imgclf augments whole batches (data/batch_augment.py: per-image random parameters, compiled
loops); with cached images its workers are threads, since batches then need no copy between
processes. Every pipeline runs with one intra-op thread per worker.

Targets: imgclf epoch 2 >= 3x naive, and >= 5x an epoch that decodes from disk.

    python benchmarks/data_pipeline.py [--root DIR] [--workers 0 2] [--size 128]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from imgclf.data.cache import DecodeCache
from imgclf.data.dataset import DecodedImages, LazyImages, make_loader
from imgclf.data.folder import FolderSource
from imgclf.runtime import tune_malloc

MEAN, STD = [0.519, 0.499, 0.469], [0.175, 0.183, 0.197]  # the dishes project's train statistics


def dishes_augmentation() -> list:
    return [
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomRotation(degrees=10),
        v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.05),
        v2.TrivialAugmentWide(num_magnitude_bins=31),
    ]


def naive_dataset(root: Path, size: int) -> datasets.ImageFolder:
    transform = v2.Compose(
        [
            v2.Resize((size, size)),
            *dishes_augmentation(),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
    return datasets.ImageFolder(str(root), transform=transform)


def loader(dataset, workers: int):
    """Shuffled batches of 32 with ``workers`` workers: the naive pipeline gets a plain DataLoader
    (persistent worker processes, so that steady epochs are timed), imgclf's datasets what training
    gives them (``make_loader``: threads for decoded images with a batch augmentation)."""
    if isinstance(dataset, datasets.ImageFolder):
        return DataLoader(dataset, batch_size=32, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    return make_loader(dataset, batch_size=32, shuffle=True, num_workers=workers)


def epoch(batches: DataLoader, normalize_batches: bool) -> float:
    """Seconds to serve every image once, in shuffled batches of 32."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    start = time.perf_counter()
    for images, _ in batches:
        if normalize_batches:  # what imgclf's model does on its device
            images = (images.float() / 255 - mean) / std
    return time.perf_counter() - start


def steady_rate(dataset, workers: int, normalize_batches: bool, n: int, seconds: float = 4.0) -> float:
    """Images/s over whole epochs after a warm-up epoch (workers started, code compiled): at least
    two epochs and ``seconds`` in all, so that a fast pipeline is not timed on a 0.1 s epoch."""
    batches = loader(dataset, workers)
    epoch(batches, normalize_batches)
    elapsed, epochs = 0.0, 0
    while epochs < 2 or elapsed < seconds:
        elapsed += epoch(batches, normalize_batches)
        epochs += 1
    return epochs * n / elapsed


def measure(name: str, root: Path, size: int, workers: int, cache_dir: str) -> float:
    """Images/s of one pipeline; runs in its own process (see main)."""
    source = FolderSource(str(root), val_fraction=0, test_fraction=0)
    samples = source.scan().samples["train"]
    paths, labels = [p for p, _ in samples], [label for _, label in samples]
    augment = v2.Compose(dishes_augmentation())
    flips = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()])
    n = len(paths)
    if name == "naive":
        return steady_rate(naive_dataset(root, size), workers, False, n)
    tune_malloc()  # imgclf's default (tune_malloc: true), applied by train.py and test.py
    cache = DecodeCache(cache_dir, mode="disk", progress=False)
    if name == "imgclf, epoch 1":  # a first run: build the cache, then serve one epoch
        start = time.perf_counter()
        images, _ = cache.load(paths, size)
        return n / (time.perf_counter() - start + epoch(loader(DecodedImages(images, labels, augment), workers), True))
    if name.endswith("no cache"):
        return steady_rate(
            LazyImages(paths, labels, size, flips if name.startswith("flips") else augment), workers, True, n
        )
    images, _ = cache.load(paths, size)  # later epochs and runs: the memory-mapped file
    return steady_rate(DecodedImages(images, labels, flips if name.startswith("flips") else augment), workers, True, n)


PIPELINES = (
    "naive",
    "imgclf, no cache",
    "imgclf, epoch 1",
    "imgclf, epoch 2",
    "flips only, no cache",
    "flips only, cached",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_root = Path(__file__).resolve().parents[2] / "shared" / "data" / "food101_mini" / "train"
    parser.add_argument("--root", type=Path, default=default_root, help="an ImageFolder-style folder")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # per-sample transforms: threads only add overhead; same for all
    if args.child:
        print(measure(args.child, args.root, args.size, args.workers[0], args.cache_dir))
        return
    print(
        f"images from {args.root}, {args.size} px, dishes augmentation, batch 32; each pipeline in its own "
        "process (naive with glibc's malloc defaults, imgclf with its own defaults)"
    )
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as cache_dir:
            rates = {}
            for name in PIPELINES:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        name,
                        "--root",
                        str(args.root),
                        "--size",
                        str(args.size),
                        "--workers",
                        str(workers),
                        "--cache-dir",
                        cache_dir,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                rates[name] = float(out.strip().splitlines()[-1])
        print(f"workers={workers}:")
        for name, rate in rates.items():
            print(f"  {name:20s} {rate:8.0f} images/s")
        second = rates["imgclf, epoch 2"]
        print(f"  ratio epoch 2 / naive                 = {second / rates['naive']:5.2f} (target >= 3)")
        print(f"  ratio epoch 2 / decoding from disk    = {second / rates['imgclf, no cache']:5.2f} (target >= 5)")
        print(f"  ratio epoch 2 / epoch 1 (cache build) = {second / rates['imgclf, epoch 1']:5.2f}")
        print(
            f"  flips only: cached / decoding         = "
            f"{rates['flips only, cached'] / rates['flips only, no cache']:5.2f}"
        )


if __name__ == "__main__":
    main()
