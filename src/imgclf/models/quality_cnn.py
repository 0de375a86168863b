"""The image-quality project's large plain CNN (a reconstruction from its description: conv-pool
blocks and one wide dense layer that holds most of its ~69M parameters at 256 px input)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class QualityCNN(nn.Sequential):
    """Conv-ReLU-MaxPool blocks, flatten, a wide dense layer, dropout, output.

    Args:
        num_classes: number of output logits.
        image_size: input height and width (fixes the size of the dense layer).
        widths: filters of the conv blocks (each halves the resolution).
        hidden: units of the dense layer.
        dropout: dropout before the output.
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int = 256,
        widths: Sequence[int] = (32, 64, 128),
        hidden: int = 528,
        dropout: float = 0.5,
    ) -> None:
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        side = image_size // 2 ** len(widths)
        layers += [
            nn.Flatten(),
            nn.Linear(channels * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        ]
        super().__init__(*layers)
