"""What every image goes through before the network, as one record that train, test and predict share.

A file is decoded once to a ``decode_size`` square (squashed, or its shorter side resized with the centre
kept: ``resize``), augmentations run on that square, and a final centre crop gives the network its
``image_size`` input, which the model normalizes with ``mean`` / ``std``. Evaluation and prediction see
exactly the same: the square and its centre crop (torchvision's and timm's resize-shorter-side plus
centre-crop evaluation when ``resize`` is ``keep_aspect``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imgclf.data.images import RESIZE_MODES, Transform


@dataclass(frozen=True)
class Preprocessing:
    """How images reach the network; ``source`` says where the normalization came from ("model": the
    pretrained weights' own, "imagenet", "auto": measured on train, or "custom")."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    resize: str = "squash"  # RESIZE_MODES
    decode_size: int = 0  # the cached square's side (>= image_size); 0: image_size

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.decode_size < self.image_size:
            object.__setattr__(self, "decode_size", self.image_size)

    def record(self) -> dict[str, object]:
        """Plain values for the checkpoint."""
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "source": self.source,
            "resize": self.resize,
            "decode_size": self.decode_size,
        }

    @classmethod
    def from_checkpoint(cls, payload: Mapping[str, Any]) -> Preprocessing:
        """The preprocessing a checkpoint was trained with (checkpoints from before ``resize`` squashed)."""
        record = payload.get("preprocessing") or {}
        return cls(
            int(payload["image_size"]),
            tuple(payload["mean"]),
            tuple(payload["std"]),
            str(record.get("source", "custom")),
            str(record.get("resize", "squash")),
            int(record.get("decode_size", payload["image_size"])),
        )

    def view(self, transform: Transform | None) -> Transform | None:
        """``transform`` followed by the centre crop to ``image_size`` (nothing to crop: ``transform`` itself)."""
        if self.decode_size == self.image_size:
            return transform
        from torchvision.transforms import v2  # only here: predict starts without torchvision otherwise

        crop = v2.CenterCrop(self.image_size)
        if transform is None:
            return crop
        steps = transform.transforms if isinstance(transform, v2.Compose) else [transform]
        return v2.Compose([*steps, crop])  # one flat Compose, so that it keeps its batch version
