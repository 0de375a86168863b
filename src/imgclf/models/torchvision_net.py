"""Any ``torchvision.models`` classifier by name, with its weights and a new head.

``weights: null`` trains from scratch, ``DEFAULT`` (or a weights enum name such as
``IMAGENET1K_V1``) downloads torchvision's pretrained weights (internet needed once; a clear
error otherwise), and a path loads a local ``.pth`` state dict of the original model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from imgclf.errors import ConfigError
from imgclf.models.heads import BackboneClassifier, make_head


def _build(arch: str, weights: str | None) -> tuple[nn.Module, tuple | None, tuple | None]:
    """The network, and for downloaded weights their normalization."""
    try:
        builder = models.get_model_builder(arch)
    except ValueError as exc:
        raise ConfigError(
            f"model.arch={arch!r} is not a torchvision model; e.g. resnet18, vgg16, "
            "efficientnet_b2, mobilenet_v3_small, convnext_tiny"
        ) from exc
    if weights is None or Path(str(weights)).suffix in (".pt", ".pth"):
        net = builder(weights=None)
        if weights is not None:
            net.load_state_dict(_load_local(Path(weights)))
        return net, None, None
    enum = models.get_model_weights(arch)
    try:
        chosen = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except KeyError as exc:
        raise ConfigError(f"model.weights={weights!r}: {arch} has {[w.name for w in enum]} or DEFAULT") from exc
    try:
        net = builder(weights=chosen)
    except Exception as exc:  # urllib errors, hash mismatch, ...
        raise ConfigError(
            f"could not download the {arch} weights {chosen} ({exc}); connect to the internet once "
            "(torch caches them in ~/.cache/torch), or use model.weights=null or a local .pth path"
        ) from exc
    transforms = chosen.transforms()
    return net, tuple(transforms.mean), tuple(transforms.std)


def _load_local(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"model.weights: no file {path.resolve()}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"model.weights: {path} is not a loadable state dict ({exc})") from exc


def _split_classifier(net: nn.Module) -> tuple[nn.Module, int]:
    """Remove the model's classifier from its first Dropout or Linear on (as the reference projects
    replace it), keeping layers before it such as ConvNeXt's LayerNorm; returns a backbone that
    gives (B, features) and the feature size."""
    for name in ("fc", "classifier", "heads", "head"):
        old = getattr(net, name, None)
        if not isinstance(old, nn.Module):
            continue
        linears = [m for m in old.modules() if isinstance(m, nn.Linear)]
        if not linears:
            continue
        if isinstance(old, nn.Sequential):
            kept = []
            for layer in old:
                if isinstance(layer, (nn.Dropout, nn.Linear)):
                    break
                kept.append(layer)
            setattr(net, name, nn.Sequential(*kept))
        else:
            setattr(net, name, nn.Identity())
        return nn.Sequential(net, nn.Flatten(1)), linears[0].in_features
    raise ConfigError(f"do not know where the classifier of {type(net).__name__} is")


class TorchvisionNet(BackboneClassifier):
    """A torchvision architecture as backbone, with a new head.

    Args:
        num_classes: number of output logits.
        arch: the torchvision model name (``resnet18``, ``vgg16``, ``efficientnet_b2``, ...).
        weights: None (from scratch), ``DEFAULT`` or a weights name (download), or a local ``.pth``.
        hidden: hidden layer sizes of the new head (empty: one linear layer).
        dropout: dropout in the head.
        freeze: ``none`` or ``backbone``.
        unfreeze_at_epoch: with a frozen backbone, train everything from this epoch on (None: never).
        backbone_lr_scale: the backbone's learning rate relative to the head's (e.g. 0.1).
        freeze_bn: keep the backbone's BatchNorm statistics fixed while fine-tuning.
    """

    def __init__(
        self,
        num_classes: int,
        arch: str = "resnet18",
        weights: str | None = None,
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
        freeze: str = "none",
        unfreeze_at_epoch: int | None = None,
        backbone_lr_scale: float = 1.0,
        freeze_bn: bool = False,
    ) -> None:
        net, mean, std = _build(arch, weights)
        backbone, features = _split_classifier(net)
        super().__init__(
            backbone,
            make_head(features, num_classes, hidden, dropout),
            freeze=freeze,
            unfreeze_at_epoch=unfreeze_at_epoch,
            backbone_lr_scale=backbone_lr_scale,
            freeze_bn=freeze_bn,
        )
        self.input_mean, self.input_std = mean, std  # pretrained weights bring their normalization

    @staticmethod
    def native_input_size(arch: str = "resnet18", weights: str | None = None, **_: object) -> int | None:
        """The input size torchvision's pretrained weights were trained at (read without downloading them)."""
        if weights is None or Path(str(weights)).suffix in (".pt", ".pth"):
            return None
        try:
            enum = models.get_model_weights(arch)
            chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
        except (KeyError, ValueError):
            return None  # the model's own constructor names the bad value
        return int(chosen.transforms().crop_size[0])
