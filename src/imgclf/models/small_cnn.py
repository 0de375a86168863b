"""A small BatchNorm CNN for small images (the quickstart)."""

from __future__ import annotations

from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Sequential):
    """Two conv-conv-pool stages, global average pooling and a linear head.

    Args:
        num_classes: number of output logits.
        in_channels: input channels.
        width: channels of the first stage (the second has twice as many).
        dropout: dropout before the head.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 32, dropout: float = 0.1) -> None:
        super().__init__(
            conv_bn_relu(in_channels, width),
            conv_bn_relu(width, width),
            nn.MaxPool2d(2),
            conv_bn_relu(width, 2 * width),
            conv_bn_relu(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(2 * width, num_classes),
        )
