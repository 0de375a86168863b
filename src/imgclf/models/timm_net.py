"""Any architecture of the timm model zoo by name, as a backbone with imgclf's head.

``pretrained: true`` loads timm's weights for the name (``convnext_nano``, or a tagged name such as
``convnext_nano.in12k_ft_in1k`` for one set of them; downloaded from the Hugging Face Hub once, a clear
error offline), ``weights: <file>`` loads a local timm checkpoint of the same architecture instead (a
``model.safetensors`` / ``pytorch_model.bin`` copied from the Hub, or a ``.pth``). The pretrained weights
bring their input size and normalization (timm's pretrained config), so ``dataset.image_size=auto`` and the
normalization follow them; a network trained from scratch brings neither.

Only names timm registers are built (``timm.list_models()``): no ``hf-hub:`` or ``local-dir:`` names, which
would fetch a configuration from elsewhere, so a checkpoint naming this class can build nothing but timm's own
architectures.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
from timm.models import get_pretrained_cfg
from torch import nn

from imgclf.errors import ConfigError
from imgclf.models.heads import BackboneClassifier, make_head

WEIGHT_FILES = (".safetensors", ".bin", ".pth", ".pt")


def _pretrained_cfg(name: Any) -> Any:
    """timm's pretrained config of a registered ``name`` (its input size, mean, std, whether the input size is
    fixed at construction); a ConfigError naming similar models for any other name."""
    if not isinstance(name, str) or ":" in name or not timm.is_model(name):
        stem = re.split(r"[.:]", str(name).rsplit("/", 1)[-1])[0]  # hf-hub:timm/resnet18.a1_in1k -> resnet18
        similar = difflib.get_close_matches(stem, timm.list_models(), n=6, cutoff=0.75)
        hint = f"similar: {', '.join(similar)}" if similar else "e.g. resnet18, convnext_nano, efficientnet_b0"
        raise ConfigError(
            f'model.name={name!r} is not a timm architecture ({hint}; `python -c "import timm; '
            "print(timm.list_models('*convnext*'))\"` lists them)"
        )
    try:
        return get_pretrained_cfg(name)
    except RuntimeError as exc:  # a tag the architecture has no weights for
        arch = name.split(".")[0]
        tags = timm.list_pretrained(f"{arch}.*")[:8]
        raise ConfigError(f"model.name={name!r}: {exc} timm has {tags or 'no pretrained weights for it'}") from exc


def _weights_file(weights: str | None) -> Path | None:
    if weights is None:
        return None
    path = Path(str(weights)).expanduser()
    if path.suffix not in WEIGHT_FILES:
        raise ConfigError(
            f"model.weights={weights!r}: expected a local timm checkpoint file ({', '.join(WEIGHT_FILES)})"
        )
    if not path.is_file():
        raise ConfigError(f"model.weights: no file {path.resolve()}")
    return path


def _create(name: str, pretrained: bool, weights: Path | None, options: dict[str, Any]) -> nn.Module:
    """The timm network without its classifier (it returns pooled features)."""
    overlay = {"file": str(weights)} if weights is not None else None  # timm's way to load a local checkpoint
    try:
        return timm.create_model(
            name,
            pretrained=pretrained or weights is not None,
            pretrained_cfg_overlay=overlay,
            num_classes=0,
            exportable=True,  # ONNX-friendly layer choices (static 'same' padding, plain activations)
            **options,
        )
    except TypeError as exc:  # a keyword this architecture's constructor does not take
        raise ConfigError(f"model.name={name}: timm cannot build it with {options} ({exc})") from exc
    except Exception as exc:  # the Hub offline or unreachable, a missing cache entry, a file that does not fit...
        if weights is not None:
            raise ConfigError(f"model.weights: {weights} does not load into timm's {name} ({exc})") from exc
        if not pretrained:
            raise
        raise ConfigError(
            f"could not load timm's pretrained weights for {name} ({type(exc).__name__}: {exc}); connect to the "
            "internet once (they are cached in ~/.cache/huggingface), or use model.pretrained=false, or "
            "model.weights=<a local model.safetensors / pytorch_model.bin of this architecture>"
        ) from exc


class TimmNet(BackboneClassifier):
    """A timm architecture as backbone, with a new head.

    Args:
        num_classes: number of output logits.
        name: a timm model name (``resnet18``, ``convnext_nano``, ``efficientnet_b0``,
            ``vit_tiny_patch16_224``...), optionally with a weights tag (``convnext_nano.in12k_ft_in1k``).
        pretrained: load timm's pretrained weights for ``name`` (downloaded once).
        weights: a local timm checkpoint file of the architecture, loaded instead of downloading (None: none).
        image_size: the input side; passed to architectures whose input size is fixed when they are built
            (ViT, DeiT, Swin: timm's ``img_size``, position embeddings resampled); convolutional ones take any.
        drop_path_rate: stochastic depth in the backbone (0: none).
        hidden: hidden layer sizes of the new head (empty: one linear layer).
        dropout: dropout in the head.
        freeze: ``none`` or ``backbone``.
        unfreeze_at_epoch: with a frozen backbone, train everything from this epoch on (None: never).
        backbone_lr_scale: the backbone's learning rate relative to the head's (e.g. 0.1).
        freeze_bn: keep the backbone's BatchNorm statistics fixed while fine-tuning.

    Raises:
        ConfigError: an unknown name or tag, settings the architecture does not take, weights that cannot be
            downloaded or loaded.
    """

    def __init__(
        self,
        num_classes: int,
        name: str = "resnet18",
        pretrained: bool = False,
        weights: str | None = None,
        image_size: int | None = None,
        drop_path_rate: float = 0.0,
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
        freeze: str = "none",
        unfreeze_at_epoch: int | None = None,
        backbone_lr_scale: float = 1.0,
        freeze_bn: bool = False,
    ) -> None:
        pretrained_cfg = _pretrained_cfg(name)
        if not 0 <= drop_path_rate < 1:
            raise ConfigError(f"model.drop_path_rate={drop_path_rate}: expected a probability in [0, 1), e.g. 0.1")
        options: dict[str, Any] = {}
        if drop_path_rate:  # only when asked: not every architecture takes the keyword
            options["drop_path_rate"] = float(drop_path_rate)
        if pretrained_cfg is not None and pretrained_cfg.fixed_input_size and isinstance(image_size, int):
            options["img_size"] = image_size
        file = _weights_file(weights)
        backbone = _create(name, bool(pretrained), file, options)
        features = getattr(backbone, "head_hidden_size", None) or backbone.num_features  # after any pre-logits layer
        super().__init__(
            backbone,
            make_head(features, num_classes, hidden, dropout),
            freeze=freeze,
            unfreeze_at_epoch=unfreeze_at_epoch,
            backbone_lr_scale=backbone_lr_scale,
            freeze_bn=freeze_bn,
        )
        if pretrained or file is not None:  # the weights expect the normalization they were trained with
            data = backbone.pretrained_cfg
            self.input_mean, self.input_std = tuple(data["mean"]), tuple(data["std"])

    @staticmethod
    def native_input_size(
        name: str = "resnet18", pretrained: bool = False, weights: str | None = None, **_: object
    ) -> int | None:
        """The input size timm's pretrained weights were trained at (from its pretrained config, nothing
        downloaded); None for a network trained from scratch."""
        if not pretrained and weights is None:
            return None
        pretrained_cfg = _pretrained_cfg(name)
        return int(pretrained_cfg.input_size[-1]) if pretrained_cfg is not None else None
