"""The CIFAR-10 project's CNN: three Conv-Conv-MaxPool blocks and a dense head.

Its steps are switches: the baseline (``batch_norm: false, dropout: 0``), then BatchNorm after
every conv, then dropout after every block (and in the head), then data augmentation
(``augmentation=cifar``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class CifarCNN(nn.Sequential):
    """Args:
    num_classes: number of output logits.
    image_size: input height and width (fixes the size of the dense layer).
    widths: filters of the three blocks.
    hidden: units of the dense layer before the output.
    batch_norm: BatchNorm after every conv.
    dropout: dropout after every block and before the output (0: none).
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int = 32,
        widths: Sequence[int] = (32, 64, 128),
        hidden: int = 128,
        batch_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            for _ in range(2):
                layers += [nn.Conv2d(channels, width, 3, padding=1)]
                layers += [nn.BatchNorm2d(width)] if batch_norm else []
                layers += [nn.ReLU(inplace=True)]
                channels = width
            layers += [nn.MaxPool2d(2)] + ([nn.Dropout(dropout)] if dropout else [])
        side = image_size // 2 ** len(widths)
        layers += [nn.Flatten(), nn.Linear(channels * side * side, hidden), nn.ReLU(inplace=True)]
        layers += ([nn.Dropout(dropout)] if dropout else []) + [nn.Linear(hidden, num_classes)]
        super().__init__(*layers)
