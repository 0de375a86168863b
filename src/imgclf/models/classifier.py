"""The model as users ship it: a network plus the input normalization it was trained with."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class Classifier(nn.Module):
    """Normalizes inputs, then runs ``net``.

    Inputs may be uint8 images (0..255) or floats in 0..1, shape (B, 3, H, W). Keeping the
    normalization inside the model means a checkpoint carries its own preprocessing, and uint8
    batches travel to the device at a quarter of the size of float ones.

    Args:
        net: the network, mapping normalized images to (B, num_classes) logits.
        mean: per-channel mean.
        std: per-channel standard deviation.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the network (e.g. to unfreeze a pretrained backbone at a given epoch)."""
        if hasattr(self.net, "set_epoch"):
            self.net.set_epoch(epoch)

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Replace the input statistics (e.g. once ``normalize: auto`` has measured them)."""
        self.mean.copy_(torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.std.copy_(torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (0..255) or float (0..1) images -> the normalized floats the network takes."""
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))


class FlipAveraged(nn.Module):
    """Test-time augmentation: the mean of the class probabilities of every image and its mirror image.

    Returns log-probabilities, so a softmax of the output (with or without a temperature of 1) gives
    exactly the averaged probabilities, and every metric reads it like logits.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        both = torch.stack([torch.log_softmax(self.model(x).float(), dim=1) for x in (images, images.flip(-1))])
        return torch.logsumexp(both, dim=0) - math.log(2)


# test-time augmentation by name: the model as it is evaluated (test.py tta=..., predict.py --tta ...)
TTA = {"none": lambda model: model, "flip": FlipAveraged}
TTA_MODES = tuple(TTA)


def with_tta(model: nn.Module, tta: str) -> nn.Module:
    """``model`` as evaluated with test-time augmentation ``tta``, one of :data:`TTA_MODES` (the config check
    and predict's command line accept only those)."""
    return TTA[tta](model)
