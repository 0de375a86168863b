"""What one frozen-backbone pass costs on this machine: seconds per image, measured, not guessed.

``trainer.budget`` with a frozen, cached backbone (the ``transfer`` recipe) spends most of its time computing the
features; :func:`seconds_per_image` times the network on random images of the input size the run would use, on
the engine the run would use, so the run can choose backbones and a size that fit before it decodes a file.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from imgclf.training.onnx_twin import faster_backbone

WARM_UP = 1  # image in the untimed first pass (it also exports the backbone for onnxruntime)


def seconds_per_image(
    net: nn.Module,
    image_size: int,
    *,
    engine: str,
    device: torch.device,
    folder: Path | None = None,
    batch: int = 4,
    channels_last: bool = True,
) -> float:
    """The wall time of one eval pass per image, on a batch of ``batch`` random images of ``image_size`` px.

    The first, untimed pass warms the kernels up (and exports the backbone when ``engine`` resolves to
    onnxruntime: ``folder`` keeps that export for the run that follows); the network is left in eval mode.
    """
    net = net.to(device).eval()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, image_size, image_size, generator=generator).to(device, memory_format=layout)
    with faster_backbone(net, engine, device, folder), torch.no_grad():
        net(images[:WARM_UP])
        sync(device)
        start = time.perf_counter()
        net(images)
        sync(device)
        return (time.perf_counter() - start) / batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
