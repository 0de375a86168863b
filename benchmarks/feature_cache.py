"""Per-epoch time of head training on a frozen EfficientNet-Lite0 at 224 px: running the backbone
every epoch against cached backbone features (``trainer.cache_features=true``). Target >= 10x.

    python benchmarks/feature_cache.py [--images 256] [--size 224] [--epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import TensorDataset

from imgclf.data.dataset import make_loader
from imgclf.models.classifier import Classifier
from imgclf.models.lite0 import EfficientNetLite0
from imgclf.runtime import tune_malloc
from imgclf.training.engine import train_one_epoch
from imgclf.training.features import extract


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    tune_malloc()
    device = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 5, (args.images,), generator=g)
    model = Classifier(EfficientNetLite0(5, freeze="backbone"), [0.5] * 3, [0.5] * 3)
    loss_fn = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.net.param_groups(1e-3))
    images_loader = make_loader(TensorDataset(images, labels), batch_size=32, shuffle=True)

    full = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        train_one_epoch(model, images_loader, loss_fn, optimizer, device=device)
        full.append(time.perf_counter() - start)
    start = time.perf_counter()
    features = extract(model, make_loader(TensorDataset(images, labels), batch_size=32, shuffle=False), device)
    extraction = time.perf_counter() - start
    feature_loader = make_loader(features, batch_size=32, shuffle=True)
    cached = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        train_one_epoch(model.net.head, feature_loader, loss_fn, optimizer, device=device)
        cached.append(time.perf_counter() - start)
    print(
        f"EfficientNet-Lite0 frozen, {args.images} images at {args.size} px, batch 32, median of {args.epochs} epochs"
    )
    print(f"  backbone every epoch      {statistics.median(full):8.3f} s/epoch")
    print(
        f"  cached features           {statistics.median(cached):8.3f} s/epoch (one-off extraction {extraction:.1f} s)"
    )
    print(f"  per-epoch speed-up = {statistics.median(full) / statistics.median(cached):.0f}x (target >= 10x)")


if __name__ == "__main__":
    main()
