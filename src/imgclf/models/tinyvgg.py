"""TinyVGG (the dishes project's from-scratch model): VGG-style blocks and a linear head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from imgclf.errors import ConfigError


def vgg_block(in_channels: int, out_channels: int, batch_norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for channels in (in_channels, out_channels):
        layers += [nn.Conv2d(channels, out_channels, 3, padding=1)]
        layers += [nn.BatchNorm2d(out_channels)] if batch_norm else []
        layers += [nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


class TinyVGG(nn.Sequential):
    """conv-ReLU-conv-ReLU-maxpool blocks (two in the dishes project), then flatten and one linear layer.

    Args:
        num_classes: number of output logits.
        image_size: input height and width (fixes the size of the linear layer).
        in_channels: input channels.
        width: channels of every conv layer of the two blocks (the dishes project's model), or a
            list with the channels of each block: ``[64, 128, 256]`` is three blocks.
        batch_norm: BatchNorm after every conv (not in the dishes project's model; trains faster
            and further from scratch).

    Raises:
        ConfigError: an empty width list, a width below 1, or more blocks than the image size allows
            (every block halves it).
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int,
        in_channels: int = 3,
        width: int | Sequence[int] = 16,
        batch_norm: bool = False,
    ) -> None:
        widths = [width, width] if isinstance(width, int) else [int(w) for w in width]
        if not widths or min(widths) < 1:
            raise ConfigError(f"model.width must be a positive integer or a list of them, got {width!r}")
        side = image_size >> len(widths)
        if side < 1:
            raise ConfigError(
                f"model.width={width!r} makes {len(widths)} blocks, each halving the image, but "
                f"dataset.image_size={image_size} allows at most {image_size.bit_length() - 1}: "
                "use fewer blocks or larger images"
            )
        blocks = [vgg_block(a, b, batch_norm) for a, b in zip([in_channels, *widths[:-1]], widths, strict=True)]
        super().__init__(*blocks, nn.Flatten(), nn.Linear(widths[-1] * side * side, num_classes))
