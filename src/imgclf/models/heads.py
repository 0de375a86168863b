"""Classifier heads and backbone freezing, shared by the pretrained-backbone models."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def make_head(in_features: int, num_classes: int, hidden: Sequence[int] = (), dropout: float = 0.0) -> nn.Sequential:
    """``Dropout-Linear`` (no hidden layers) or an MLP: ``[Dropout-Linear-ReLU] * len(hidden)``, then
    ``Dropout-Linear``. E.g. hidden=[256], dropout=0.5 is the dishes project's EfficientNet-B2 head."""
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Dropout(dropout), nn.Linear(width, size), nn.ReLU(inplace=True)]
        width = size
    layers += [nn.Dropout(dropout), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)


class BackboneClassifier(nn.Module):
    """A pretrained feature extractor and a new head, with optional freezing of the backbone.

    Args:
        backbone: maps images to (B, features) vectors.
        head: maps features to logits.
        freeze: ``none`` or ``backbone`` (train only the head; its BatchNorm statistics stay fixed).
        unfreeze_at_epoch: with ``freeze=backbone``, train everything from this epoch (0-based) on;
            None to keep the backbone frozen.
        backbone_lr_scale: the backbone's learning rate relative to the head's.
        freeze_bn: keep the backbone's BatchNorm statistics fixed while its weights train (small
            or heavily augmented batches would otherwise overwrite the pretrained statistics).
    """

    input_mean: tuple[float, ...] | None = None  # the normalization the pretrained weights expect
    input_std: tuple[float, ...] | None = None

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        freeze: str = "none",
        unfreeze_at_epoch: int | None = None,
        backbone_lr_scale: float = 1.0,
        freeze_bn: bool = False,
    ) -> None:
        super().__init__()
        if freeze not in ("none", "backbone"):
            raise ValueError(f"model.freeze must be none or backbone, got {freeze!r}")
        self.backbone, self.head = backbone, head
        self.freeze, self.unfreeze_at_epoch = freeze, unfreeze_at_epoch
        self.backbone_lr_scale = backbone_lr_scale
        self.freeze_bn = freeze_bn
        self.set_epoch(0)

    @property
    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loop before each epoch: freezes or unfreezes the backbone."""
        frozen = self.freeze == "backbone" and (self.unfreeze_at_epoch is None or epoch < self.unfreeze_at_epoch)
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)

    def train(self, mode: bool = True) -> BackboneClassifier:
        super().train(mode)
        if mode and self.frozen:
            self.backbone.eval()  # a frozen backbone keeps its BatchNorm statistics and no dropout
        elif mode and self.freeze_bn:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()  # fine-tune the weights, keep the pretrained statistics
        return self

    def param_groups(self, lr: float) -> list[dict]:
        """Optimizer parameter groups: the head at ``lr``, the backbone at ``lr * backbone_lr_scale``.

        Frozen parameters are included (they have no gradient, so optimizers skip them) so that
        unfreezing later needs no new optimizer.
        """
        return [
            {"params": list(self.head.parameters()), "lr": lr},
            {"params": list(self.backbone.parameters()), "lr": lr * self.backbone_lr_scale},
        ]

    def forward(self, x):  # noqa: ANN001, ANN201 - nn.Module signature
        return self.head(self.backbone(x))
