"""TinyVGG (the dishes project's from-scratch model): two VGG-style blocks and a linear head."""

from __future__ import annotations

from torch import nn


def vgg_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class TinyVGG(nn.Sequential):
    """conv-ReLU-conv-ReLU-maxpool twice, then flatten and one linear layer.

    Args:
        num_classes: number of output logits.
        image_size: input height and width (fixes the size of the linear layer).
        in_channels: input channels.
        width: channels of every conv layer.
    """

    def __init__(self, num_classes: int, image_size: int, in_channels: int = 3, width: int = 16) -> None:
        side = image_size // 4
        super().__init__(
            vgg_block(in_channels, width),
            vgg_block(width, width),
            nn.Flatten(),
            nn.Linear(width * side * side, num_classes),
        )
