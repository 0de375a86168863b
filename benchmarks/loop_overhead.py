"""imgclf's training loop against a minimal hand-written PyTorch loop.

Same model, same in-memory batches, same optimizer; the two loops alternate (ABAB...) so that
drift in machine speed hits both. Prints images/s of each and the ratio imgclf / hand-written
(target >= 0.97).

    python benchmarks/loop_overhead.py [--epochs 6] [--images 2048] [--size 32] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from imgclf.models.classifier import Classifier
from imgclf.models.small_cnn import SmallCNN
from imgclf.training.engine import TrainOptions, train_one_epoch


def hand_written_epoch(model, batches, loss_fn, optimizer, device) -> None:
    model.train()
    for images, labels in batches:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def build(device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    model = Classifier(SmallCNN(num_classes=10, width=32), [0.5] * 3, [0.5] * 3).to(device)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3), torch.nn.CrossEntropyLoss()


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6, help="timed epochs per loop (after one warm-up)")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    batches = list(zip(images.split(args.batch_size), labels.split(args.batch_size), strict=True))

    hand, ours = build(device), build(device)
    run_hand = lambda: hand_written_epoch(hand[0], batches, hand[2], hand[1], device)  # noqa: E731
    run_ours = lambda: train_one_epoch(  # noqa: E731
        ours[0], batches, ours[2], ours[1], device=device, options=TrainOptions(progress=True)
    )
    run_hand(), run_ours()  # warm-up
    times: dict[str, list[float]] = {"hand-written": [], "imgclf": []}
    for _ in range(args.epochs):
        times["hand-written"].append(timed(run_hand, device))
        times["imgclf"].append(timed(run_ours, device))

    rates = {name: args.images / statistics.median(ts) for name, ts in times.items()}
    print(
        f"device {device}, {args.images} images of {args.size}px, batch {args.batch_size}, "
        f"median of {args.epochs} epochs each (alternating)"
    )
    for name, rate in rates.items():
        print(f"  {name:13s} {rate:9.0f} images/s")
    print(f"ratio imgclf / hand-written = {rates['imgclf'] / rates['hand-written']:.3f} (target >= 0.97)")


if __name__ == "__main__":
    main()
