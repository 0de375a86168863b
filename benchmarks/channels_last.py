"""Training speed with ``trainer.channels_last=true`` against the default (contiguous) layout.

The recipes' models at their recipes' input sizes, through imgclf's own training loop, on the
same in-memory uint8 batches. The two layouts alternate (ABAB...) so that drift in machine speed
hits both. Prints images/s of each and the ratio channels-last / default.

    python benchmarks/channels_last.py [--rounds 3] [--batches 6] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from loop_overhead import timed  # the same clock, synchronized on CUDA

from imgclf.models.classifier import Classifier
from imgclf.models.lite0 import EfficientNetLite0
from imgclf.models.resnet_like import ResNetLike
from imgclf.models.small_cnn import SmallCNN
from imgclf.models.tinyvgg import TinyVGG
from imgclf.runtime import resolve_device, tune_malloc
from imgclf.training.engine import TrainOptions, train_one_epoch

# (name, build the network, input size): the recipes' models at their recipes' sizes
CASES = [
    ("lite0 (flowers5_lite0)", lambda: EfficientNetLite0(5), 128),
    ("lite0 at 224 px", lambda: EfficientNetLite0(5), 224),
    ("tinyvgg width 64 + BN (flowers5_tinyvgg)", lambda: TinyVGG(5, 32, width=64, batch_norm=True), 32),
    ("resnet_like (food101_mini_resnet_like)", lambda: ResNetLike(10), 128),
    ("small_cnn (quickstart)", lambda: SmallCNN(num_classes=10, width=32), 16),
]


def epoch_time(net: torch.nn.Module, batches: list, device: torch.device, channels_last: bool) -> float:
    model = Classifier(net, [0.5] * 3, [0.5] * 3).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    options = TrainOptions(channels_last=channels_last)
    loss_fn = torch.nn.CrossEntropyLoss()
    train_one_epoch(model, batches[:1], loss_fn, optimizer, device=device, options=options)  # warm-up
    return timed(lambda: train_one_epoch(model, batches, loss_fn, optimizer, device=device, options=options), device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timings of each layout")
    parser.add_argument("--batches", type=int, default=6, help="batches of 32 images per timing")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    tune_malloc()
    device = resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch 32")
    print("| model | input | default img/s | channels-last img/s | ratio |\n|---|---:|---:|---:|---:|")
    for name, build, size in CASES:
        g = torch.Generator().manual_seed(0)
        batches = [
            (
                torch.randint(0, 256, (32, 3, size, size), dtype=torch.uint8, generator=g),
                torch.randint(0, 5, (32,), generator=g),
            )
            for _ in range(args.batches)
        ]
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for layout in (False, True):
                torch.manual_seed(0)
                times[layout].append(epoch_time(build(), batches, device, layout))
        images = 32 * args.batches
        default, last = (images / statistics.median(times[layout]) for layout in (False, True))
        print(f"| {name} | {size} px | {default:.0f} | {last:.0f} | {last / default:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
