"""The speed steps of benchmarks/gpu_check.py: imgclf's loop against a minimal hand-written loop on the device,
and whether the CPU-side batch augmentation serves images as fast as the device trains on them.

Both train a timm ResNet-18 (imgclf's ``model=timm``) inside imgclf's ``Classifier`` on uint8 batches as the
loader hands them over (pinned on CUDA), with the same AMP and memory layout on both sides.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch
from gpu_check_steps import ROOT, Result, Setup
from torch import nn

from imgclf.data.dataset import DecodedImages, make_loader
from imgclf.models.classifier import Classifier
from imgclf.models.timm_net import TimmNet
from imgclf.training.device import autocast, to_device
from imgclf.training.engine import TrainOptions, train_one_epoch

Batches = list[tuple[torch.Tensor, torch.Tensor]]
CLASSES = 10
LOOP_TARGET = 0.97  # benchmarks/loop_overhead.py's target (0.991 measured on 2 CPU cores)


def sizes(setup: Setup) -> tuple[int, int, int]:
    """(images, input size, batch): an H100 trains a ResNet-18 at 128 px at several thousand images/s."""
    return (96, 32, 32) if setup.quick else (8192, 128, 256)


def settings(setup: Setup) -> tuple[str, bool]:
    """(amp, channels_last) as the GPU steps use them; fp32 on the CPU, where bf16 autocast is slow."""
    return ("bf16", True) if setup.cuda else ("none", False)


def build(setup: Setup, size: int) -> tuple[nn.Module, torch.optim.Optimizer, nn.Module]:
    torch.manual_seed(0)
    net = TimmNet(num_classes=CLASSES, name=setup.timm_model, image_size=size)
    layout = torch.channels_last if settings(setup)[1] else torch.preserve_format
    model = Classifier(net, [0.5] * 3, [0.25] * 3).to(setup.device, memory_format=layout)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3), nn.CrossEntropyLoss()


def synthetic_batches(setup: Setup) -> Batches:
    count, size, batch = sizes(setup)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, CLASSES, (count,), generator=g)
    batches = list(zip(images.split(batch), labels.split(batch), strict=True))
    return [(x.pin_memory(), y.pin_memory()) for x, y in batches] if setup.cuda else batches


def hand_written_epoch(model, batches, loss_fn, optimizer, device: torch.device, amp: str, channels_last: bool):
    """The minimal PyTorch loop: the same AMP and layout, no checks, no metrics."""
    model.train()
    for images, labels in batches:
        images, labels = to_device(images, device, channels_last), labels.to(device, non_blocking=True)
        with autocast(device, amp):
            loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def timed(run: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def imgclf_epoch(setup: Setup, parts, batches) -> Callable[[], object]:
    amp, channels_last = settings(setup)
    model, optimizer, loss_fn = parts
    options = TrainOptions(amp=amp, channels_last=channels_last)
    return lambda: train_one_epoch(
        model, batches, loss_fn, optimizer, device=torch.device(setup.device), options=options
    )


def loop_ratio(setup: Setup) -> Result:
    """imgclf's train_one_epoch against the hand-written loop, alternating epochs after a warm-up of each."""
    device = torch.device(setup.device)
    count, size, batch = sizes(setup)
    amp, channels_last = settings(setup)
    batches = synthetic_batches(setup)
    ours, hand = build(setup, size), build(setup, size)
    run_ours = imgclf_epoch(setup, ours, batches)
    model, optimizer, loss_fn = hand
    run_hand = lambda: hand_written_epoch(model, batches, loss_fn, optimizer, device, amp, channels_last)  # noqa: E731
    run_ours(), run_hand()  # warm-up: cuDNN's algorithm search, the allocator's pools
    times: dict[str, list[float]] = {"imgclf": [], "hand": []}
    for _ in range(2 if setup.quick else 5):
        times["imgclf"].append(timed(run_ours, device))
        times["hand"].append(timed(run_hand, device))
    rates = {name: count / statistics.median(ts) for name, ts in times.items()}
    ratio = rates["imgclf"] / rates["hand"]
    verdict = "met" if ratio >= LOOP_TARGET else "MISSED"
    return Result(
        images_per_s=rates["imgclf"],
        details=[
            f"ratio imgclf/hand {ratio:.3f} (target {LOOP_TARGET}: {verdict})",
            f"hand loop {rates['hand']:.0f} img/s",
            f"{setup.timm_model} {size} px, batch {batch}, amp {amp}, channels-last {channels_last}",
        ],
    )


def augmentation(size: int):
    """conf/augmentation/imagenet.yaml's train transforms at ``size`` (random resized crop, flip, colour jitter)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import imgclf.tasks  # noqa: F401  the resolvers the YAML uses

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", ["augmentation=imagenet", f"dataset.image_size={size}"])
    return instantiate(cfg.augmentation.train)


def serve_rate(loader, count: int) -> tuple[float, Batches]:
    """Images/s of one epoch of ``loader`` (after a warm-up epoch), and its batches."""
    for _ in loader:
        pass
    start = time.perf_counter()
    batches = list(loader)
    return count / (time.perf_counter() - start), batches


def augment_vs_gpu(setup: Setup) -> Result:
    """The batch augmentation on the CPU (worker threads) against training on the device from ready batches, then
    training from the augmenting loader itself: it keeps up when the last is as fast as the second."""
    device = torch.device(setup.device)
    count, size, batch = sizes(setup)
    threads = 1 if setup.quick else min(8, os.cpu_count() or 1)
    rng = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (count, size, size, 3), dtype=torch.uint8, generator=rng).numpy()
    dataset = DecodedImages(pixels, torch.randint(0, CLASSES, (count,), generator=rng).tolist(), augmentation(size))
    if dataset.batch_op is None:
        raise RuntimeError(f"the imagenet augmentation has no batch version here: {dataset.why_per_image}")
    loader = make_loader(dataset, batch_size=batch, shuffle=True, num_workers=threads, pin_memory=setup.cuda)
    served, ready = serve_rate(loader, count)
    parts = build(setup, size)
    from_ready, from_loader = imgclf_epoch(setup, parts, ready), imgclf_epoch(setup, parts, loader)
    from_ready(), from_loader()  # warm-up
    rounds = 1 if setup.quick else 3
    trained = count / min(timed(from_ready, device) for _ in range(rounds))
    end_to_end = count / min(timed(from_loader, device) for _ in range(rounds))
    verdict = "keeps up" if end_to_end >= 0.95 * trained else f"falls behind ({end_to_end / trained:.0%})"
    return Result(
        images_per_s=end_to_end,
        details=[
            f"augmentation {served:.0f} img/s on {threads} CPU thread(s)",
            f"{setup.device} trains {trained:.0f} img/s from ready batches: {verdict}",
            f"imagenet augmentation, {setup.timm_model} {size} px, batch {batch}",
        ],
    )
