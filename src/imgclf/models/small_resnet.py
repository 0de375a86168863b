"""A CIFAR-grade residual network for small images, trained from scratch (the ``scratch`` recipe's model).

The CIFAR ResNets of He et al. (2016, section 4.2): a 3x3 stem that keeps the resolution, stages of
basic blocks (two 3x3 conv-BN layers and a shortcut) that double the width and halve the resolution,
global average pooling and one linear layer. Sized for the input: a stem stride of
``image_size // 32`` gives the first stage at most about 32x32 pixels, so 64 px images cost what 32 px
ones do in every later layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from imgclf.models.resnet_like import ResidualBlock, conv_bn


class SmallResNet(nn.Module):
    """Args:
    num_classes: number of output logits.
    image_size: the input side (sets the stem's stride).
    widths: channels of each stage (each after the first halves the resolution).
    blocks: basic blocks per stage (3 with widths 16/32/64 is ResNet-20).
    dropout: dropout before the linear layer.
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int = 32,
        widths: Sequence[int] = (32, 64, 128),
        blocks: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        stride = max(1, int(image_size) // 32)
        self.stem = nn.Sequential(*conv_bn(3, widths[0], stride=stride), nn.ReLU(inplace=True))
        layers, width = [], widths[0]
        for stage, out in enumerate(widths):
            for block in range(blocks):
                layers.append(ResidualBlock(width, out, stride=2 if stage and not block else 1, convs=2))
                width = out
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))
