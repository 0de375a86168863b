"""Batches on the device, and mixed precision: shared by the training step, validation and feature caching."""

from __future__ import annotations

import torch

AMP_MODES = ("none", "bf16", "fp16")  # trainer.amp as the loop runs it (``auto`` is resolved to one of these first)


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A batch on ``device``; image batches (not cached feature vectors) channels-last when asked."""
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last and images.dim() == 4 else images


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """Mixed precision for ``amp`` = ``bf16`` or ``fp16`` (``none``: full precision); ``auto`` is resolved before a
    run trains (``tasks.precision``)."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp={amp!r}: expected none, bf16 or fp16 (auto is resolved by tasks.precision.fit)")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=amp != "none")
