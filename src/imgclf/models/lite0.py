"""EfficientNet-Lite0: :class:`~imgclf.models.efficientnet_lite.EfficientNetLite` with ``variant="lite0"``.

Kept as its own class because checkpoints trained before the Lite1/Lite2 variants existed name it.
"""

from __future__ import annotations

from collections.abc import Sequence

from imgclf.models.efficientnet_lite import EfficientNetLite


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 (ImageNet weights by default) with a new head; arguments as :class:`EfficientNetLite`."""

    def __init__(
        self,
        num_classes: int,
        pretrained: bool = True,
        hidden: Sequence[int] = (),
        dropout: float = 0.2,
        freeze: str = "none",
        unfreeze_at_epoch: int | None = None,
        backbone_lr_scale: float = 1.0,
        freeze_bn: bool = False,
    ) -> None:
        super().__init__(
            num_classes, "lite0", pretrained, hidden, dropout, freeze, unfreeze_at_epoch, backbone_lr_scale, freeze_bn
        )
