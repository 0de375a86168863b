"""The food11 project's ResNet-like networks: a ResNet stem, then one residual block per stage.

``ResNetLike`` (v1) has a single conv in each block, "so that the model trains faster";
``ResNetLikeV2`` has two convs per block (the project's larger v2). Each stage doubles the width
and halves the resolution; the shortcut is a strided 1x1 conv where the shape changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def conv_bn(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(out_ch)]


class ResidualBlock(nn.Module):
    """``convs`` conv-BN layers (ReLU between them) plus a shortcut, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, convs: int) -> None:
        super().__init__()
        layers = conv_bn(in_ch, out_ch, stride=stride)
        for _ in range(convs - 1):
            layers += [nn.ReLU(inplace=True), *conv_bn(out_ch, out_ch)]
        self.body = nn.Sequential(*layers)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and in_ch == out_ch
            else nn.Sequential(*conv_bn(in_ch, out_ch, kernel=1, stride=stride))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNetLike(nn.Module):
    """ResNet stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), one residual block per width, pooling, head.

    Args:
        num_classes: number of output logits.
        widths: channels of each stage (each after the first halves the resolution).
        convs_per_block: convs in each residual block (1: v1, 2: v2).
        dropout: dropout before the linear head.
    """

    def __init__(
        self,
        num_classes: int,
        widths: Sequence[int] = (64, 128, 256, 512),
        convs_per_block: int = 1,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            *conv_bn(3, widths[0], kernel=7, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1)
        )
        blocks, width = [], widths[0]
        for i, out in enumerate(widths):
            blocks.append(ResidualBlock(width, out, stride=1 if i == 0 else 2, convs=convs_per_block))
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class ResNetLikeV2(ResNetLike):
    """The v2 variant: two convs in every residual block."""

    def __init__(self, num_classes: int, widths: Sequence[int] = (64, 128, 256, 512), dropout: float = 0.2) -> None:
        super().__init__(num_classes, widths, convs_per_block=2, dropout=dropout)
