"""The one place that decides how images reach the model: their size, their shape and their normalization.

The dataset group holds the user's choice (``dataset.image_size``, ``resize``, ``crop_fraction``,
``max_image_size``, ``normalize``, ``mean``, ``std``); the network may bring the input size and the
normalization its pretrained weights were trained with; the train images bring their own sizes, and
``normalize: auto`` measures them. :func:`image_size` and :func:`resolve` weigh these once, before the model
is built; the composition root writes the result into the saved config and the checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import median
from typing import Any

from torch import nn

from imgclf.data.preprocessing import Preprocessing
from imgclf.data.stats import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

# dataset keys that describe how images are fed to the model, not the folder: the data source never sees them
KEYS = ("image_size", "max_image_size", "native_scale", "resize", "crop_fraction", "normalize", "mean", "std")
NORMALIZE = ("imagenet", "auto", "custom")
AUTO = "auto"
SMALLEST = 16  # auto never goes below this (a from-scratch model's input)
MULTIPLE = 8  # auto sizes are rounded down to a multiple of this
UPSCALE_WARNING = 2.0  # an explicit size that enlarges most train images by more than this gets a warning

Stats = tuple[tuple[float, ...], tuple[float, ...]]
Size = tuple[int, int]


@dataclass(frozen=True)
class SizeChoice:
    """The network's input side, the cached square's side and how photos become that square, and why."""

    image_size: int
    decode_size: int
    resize: str
    reason: str


def model_stats(net: nn.Module) -> Stats | None:
    """The normalization a network's pretrained weights expect (``input_mean`` / ``input_std``), or None."""
    mean, std = getattr(net, "input_mean", None), getattr(net, "input_std", None)
    return None if mean is None or std is None else (tuple(mean), tuple(std))


def native_size(model_class: type, arguments: Mapping[str, Any]) -> int | None:
    """The input size a model's pretrained weights were trained at, asked of its class before it is built
    (``native_input_size(**arguments)``; None for a model trained from scratch or one that does not say)."""
    ask = getattr(model_class, "native_input_size", None)
    size = ask(**arguments) if ask is not None else None
    return int(size) if size else None


def typical_side(sizes: Sequence[Size | None]) -> int | None:
    """The median shorter side of the images (None when no size is known)."""
    sides = [min(s) for s in sizes if s]
    return int(median(sides)) if sides else None


def image_size(
    setting: int | str,
    sizes: Sequence[Size | None],
    *,
    native: int | None,
    max_size: int,
    resize: str,
    crop_fraction: float,
    native_scale: float = 1.0,
) -> SizeChoice:
    """Decide the input size (``dataset.image_size``: a number, or ``auto``) and the cached square's side.

    ``auto`` takes the median shorter side of the train images (``sizes``: width, height of each), rounded
    down to a multiple of 8, and clamps it: a pretrained backbone (``native``: the size its weights were
    trained at) gets at most its native size and at least half of it (smaller inputs leave its last feature
    maps a pixel or two wide); with ``native_scale`` (``dataset.native_scale``) s > 1 it gets up to s times its
    native size and the images are enlarged up to s times (frozen ImageNet features are better a little above
    the native size: training crops enlarge objects, see docs/recipes.md); a model from scratch gets at most
    ``max_size`` (``dataset.max_image_size``)
    and never more than the images have. An explicit size that enlarges most images by more than 2x is
    used, with a warning. With ``resize: keep_aspect`` the square is cached ``1 / crop_fraction`` larger
    (never larger than the images), so evaluation takes its centre crop, as torchvision's references do.
    """
    typical = typical_side(sizes)
    if setting == AUTO:
        size, reason = _auto(typical, native, max_size, native_scale)
    else:
        size, reason = int(setting), "dataset.image_size"
        _warn_upscale(size, sizes)
    decode = size
    if resize == "keep_aspect":
        margin = round(size / crop_fraction)
        decode = max(size, min(margin, typical or margin))
    return SizeChoice(size, decode, resize, reason)


def _auto(typical: int | None, native: int | None, max_size: int, native_scale: float = 1.0) -> tuple[int, str]:
    if typical is None:
        raise ValueError("dataset.image_size=auto needs the train images' sizes, and none could be read")
    found = f"the train images' median shorter side is {typical} px"
    if native is not None:
        return _pretrained(found, typical, native, native_scale)
    side = _multiple(typical)
    if side > max_size:
        return max_size, f"{found}; capped by dataset.max_image_size={max_size} for a model trained from scratch"
    side = max(side, SMALLEST)
    return side, f"{found}: a model trained from scratch sees them at their own size"


def _pretrained(found: str, typical: int, native: int, scale: float) -> tuple[int, str]:
    """A pretrained model: at most ``scale`` x its native size (the native size itself at scale 1), the images
    enlarged at most ``scale`` x, and at least half the native size."""
    limit = native if scale == 1 else _multiple(native * scale)
    wanted = _multiple(typical * scale)
    if wanted >= limit:
        return limit, (
            f"{found}; the pretrained model's native input size is {native} px"
            if scale == 1
            else f"{found}; dataset.native_scale={scale:g} x the pretrained model's native {native} px"
        )
    floor = native // 2 // MULTIPLE * MULTIPLE
    if wanted < floor:
        return floor, f"{found}; enlarged to half the pretrained model's native {native} px, the least it needs"
    if scale == 1:
        return wanted, f"{found} (under the pretrained model's native {native} px: not enlarged)"
    return wanted, (
        f"{found}, enlarged {scale:g}x (dataset.native_scale) for the pretrained model "
        f"(native {native} px, up to {limit} px)"
    )


def _multiple(value: float) -> int:
    return max(MULTIPLE, int(value) // MULTIPLE * MULTIPLE)


def _warn_upscale(size: int, sizes: Sequence[Size | None]) -> None:
    sides = [min(s) for s in sizes if s]
    enlarged = sum(size > UPSCALE_WARNING * side for side in sides)
    if sides and enlarged > len(sides) / 2:
        log.warning(
            "dataset.image_size=%d enlarges %d of %d train images more than %gx (median shorter side "
            "%d px): the model pays for pixels that carry no information; dataset.image_size=auto "
            "picks a size from the images",
            size,
            enlarged,
            len(sides),
            UPSCALE_WARNING,
            typical_side(sizes),
        )


def resolve(
    choice: SizeChoice,
    normalize: str,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    expected: Stats | None,
    measure: Callable[[], Stats],
) -> Preprocessing:
    """Decide the preprocessing.

    Args:
        choice: the input and cached sizes and the resize mode (:func:`image_size`).
        normalize: ``dataset.normalize``: ``imagenet``, ``auto`` or ``custom``.
        mean: ``dataset.mean`` (used with ``custom``).
        std: ``dataset.std`` (used with ``custom``).
        expected: the network's own normalization (:func:`model_stats`); pretrained weights expect the
            statistics they were trained with, whatever the dataset says, so these win.
        measure: the train split's statistics, called only for ``normalize: auto`` without ``expected``.
    """
    shape = {"resize": choice.resize, "decode_size": choice.decode_size}
    if expected is not None:
        if expected != (tuple(mean), tuple(std)):
            log.info(
                "the model expects inputs normalized with mean %s, std %s: using them instead of the dataset's",
                list(expected[0]),
                list(expected[1]),
            )
        return Preprocessing(choice.image_size, *expected, source="model", **shape)
    if normalize == "imagenet":
        return Preprocessing(choice.image_size, IMAGENET_MEAN, IMAGENET_STD, source="imagenet", **shape)
    if normalize == "auto":
        measured_mean, measured_std = measure()
        log.info("normalize=auto: train mean %s, std %s", list(measured_mean), list(measured_std))
        return Preprocessing(choice.image_size, tuple(measured_mean), tuple(measured_std), source="auto", **shape)
    return Preprocessing(choice.image_size, tuple(mean), tuple(std), source="custom", **shape)
