"""TinyVGG (the dishes project's from-scratch model): two VGG-style blocks and a linear head."""

from __future__ import annotations

from torch import nn


def vgg_block(in_channels: int, out_channels: int, batch_norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for channels in (in_channels, out_channels):
        layers += [nn.Conv2d(channels, out_channels, 3, padding=1)]
        layers += [nn.BatchNorm2d(out_channels)] if batch_norm else []
        layers += [nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


class TinyVGG(nn.Sequential):
    """conv-ReLU-conv-ReLU-maxpool twice, then flatten and one linear layer.

    Args:
        num_classes: number of output logits.
        image_size: input height and width (fixes the size of the linear layer).
        in_channels: input channels.
        width: channels of every conv layer.
        batch_norm: BatchNorm after every conv (not in the dishes project's model; trains faster
            and further from scratch).
    """

    def __init__(self, num_classes: int, image_size: int, in_channels: int = 3, width: int = 16,
                 batch_norm: bool = False) -> None:
        side = image_size // 4
        super().__init__(
            vgg_block(in_channels, width, batch_norm),
            vgg_block(width, width, batch_norm),
            nn.Flatten(),
            nn.Linear(width * side * side, num_classes),
        )
