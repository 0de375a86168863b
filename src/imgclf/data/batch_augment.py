"""Run a torchvision v2 augmentation on a whole uint8 batch, with random parameters per image.

Augmenting one image at a time costs a Python round trip per transform per image, and some
operations (hue, sharpness) are slow however they are written as tensor code. For the transforms
that :func:`_convert` knows, :func:`batch_transform` builds an equivalent that draws every
image's parameters from the same distributions as torchvision does and applies them to the
whole batch, with compiled loops (``kernels.py``) where tensor code is slow. Outputs follow
torchvision's uint8 tensor kernels (up to one intensity level of float rounding, and
nearest-neighbour sampling at exact half-pixel ties).

A pipeline with any other transform runs image by image as before; :func:`batch_transform`
then says which transform stopped it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from imgclf.data import kernels

Generator = torch.Generator | None  # None: torch's global random generator
# uint8 (B, 3, H, W), random generator -> uint8 (B, 3, H', W')
BatchOp = Callable[[torch.Tensor, Generator], torch.Tensor]


def inverse_affine(
    angle: np.ndarray,
    translate: tuple[np.ndarray, np.ndarray] = (0.0, 0.0),
    shear: tuple[np.ndarray, np.ndarray] = (0.0, 0.0),
    center: tuple[np.ndarray, np.ndarray] = (0.0, 0.0),
) -> np.ndarray:
    """(B, 6) maps from output to source pixels for torchvision's affine(angle, translate, scale=1,
    shear) about ``center`` (offset from the image centre), in image-centred coordinates."""
    rot = np.radians(np.asarray(angle, dtype=np.float64))
    sx, sy = np.radians(shear[0]), np.radians(shear[1])
    a = np.cos(rot - sy) / np.cos(sy)
    b = -np.cos(rot - sy) * np.tan(sx) / np.cos(sy) - np.sin(rot)
    c = np.sin(rot - sy) / np.cos(sy)
    d = -np.sin(rot - sy) * np.tan(sx) / np.cos(sy) + np.cos(rot)
    # the forward map [[a, b], [c, d]] has determinant 1: its inverse is [[d, -b], [-c, a]]
    cx, cy = center
    ux, uy = -cx - np.asarray(translate[0], dtype=np.float64), -cy - np.asarray(translate[1], dtype=np.float64)
    m = np.broadcast_arrays(d, -b, d * ux - b * uy + cx, -c, a, -c * ux + a * uy + cy)
    return np.stack(m, axis=-1).reshape(-1, 6)


def _warp(images: torch.Tensor, theta: np.ndarray, fill: Sequence[int]) -> torch.Tensor:
    fill_arr = np.broadcast_to(np.asarray(fill, dtype=np.uint8), (images.shape[1],)).copy()
    return torch.from_numpy(kernels.affine_nearest(images.numpy(), theta, fill_arr))


def _color(images: torch.Tensor, ops: np.ndarray, factors: np.ndarray) -> torch.Tensor:
    """Colour operations in place; ``images`` must be contiguous."""
    kernels.color_ops(images.numpy().reshape(len(images), images.shape[1], -1), ops, factors)
    return images


def _identities(n: int) -> np.ndarray:
    return np.tile(np.eye(3), (n, 1, 1))


def _uniform(n: int, low: float, high: float, g: Generator) -> np.ndarray:
    return torch.empty(n, dtype=torch.float64).uniform_(low, high, generator=g).numpy()


class Flip:
    """RandomHorizontalFlip (axis 0: x) or RandomVerticalFlip (axis 1: y), with probability ``p`` per image."""

    def __init__(self, p: float, axis: int) -> None:
        self.p, self.axis = p, axis

    def maps(self, n: int, g: Generator) -> np.ndarray:
        """(n, 3, 3) inverse maps in image-centred coordinates (a flip is its own inverse)."""
        m = _identities(n)
        m[:, self.axis, self.axis] = np.where((torch.rand(n, generator=g) < self.p).numpy(), -1.0, 1.0)
        return m


class Rotation:
    """RandomRotation: an angle drawn uniformly from [low, high] degrees per image, nearest sampling."""

    def __init__(self, low: float, high: float, fill: Sequence[int]) -> None:
        self.low, self.high, self.fill = low, high, fill

    def maps(self, n: int, g: Generator) -> np.ndarray:
        angles = _uniform(n, self.low, self.high, g)
        return _square(inverse_affine(-angles))  # F.rotate turns counter-clockwise


def _square(theta: np.ndarray) -> np.ndarray:
    """(n, 6) affine maps as (n, 3, 3) matrices."""
    m = _identities(len(theta))
    m[:, :2, :] = theta.reshape(-1, 2, 3)
    return m


class Warp:
    """Consecutive flips and (at most one) rotation as one resampling: their per-image maps are
    multiplied, so each output pixel is looked up once (exact for flips; for a rotation the
    same nearest pixel up to half-pixel ties)."""

    def __init__(self, parts: Sequence[Flip | Rotation]) -> None:
        self.parts = list(parts)
        # a flip never looks outside the image: only a rotation has a fill
        self.fill = next((p.fill for p in self.parts if isinstance(p, Rotation)), [0])

    def takes(self, op: Any) -> bool:
        """Whether ``op`` can join this resampling (a flip, or a first rotation)."""
        return isinstance(op, Flip) or (
            isinstance(op, Rotation) and not any(isinstance(p, Rotation) for p in self.parts)
        )

    def __call__(self, images: torch.Tensor, g: Generator = None) -> torch.Tensor:
        total = _identities(len(images))
        for part in self.parts:  # the first transform's map is applied last: source of source ...
            total = total @ part.maps(len(images), g)
        return _warp(images, total[:, :2, :].reshape(-1, 6), self.fill)


class ColorJitter:
    """ColorJitter: brightness, contrast, saturation and hue factors, in a random order per image."""

    CODES = (kernels.BRIGHTNESS, kernels.CONTRAST, kernels.SATURATION, kernels.HUE)

    def __init__(self, ranges: Sequence[tuple[float, float] | None]) -> None:
        self.ranges = list(ranges)  # brightness, contrast, saturation, hue; None: not jittered

    def __call__(self, images: torch.Tensor, g: Generator = None) -> torch.Tensor:
        n = len(images)
        order = torch.rand(n, 4, generator=g).argsort(dim=1).numpy()  # a uniformly random permutation per image
        factors = np.ones((n, 4), dtype=np.float32)
        active = np.zeros(4, dtype=bool)
        for k, bounds in enumerate(self.ranges):
            if bounds is not None:
                factors[:, k] = _uniform(n, *bounds, g)
                active[k] = True
        codes = np.where(active, np.array(self.CODES), kernels.SKIP)
        ops = codes[order].astype(np.int64)
        return _color(images.contiguous(), ops, np.take_along_axis(factors, order, axis=1))


# TrivialAugmentWide's operations: name -> (magnitudes for num_bins, signed)
_WIDE: dict[str, tuple[Callable[[int], torch.Tensor] | None, bool]] = {
    "Identity": (None, False),
    "ShearX": (lambda bins: torch.linspace(0.0, 0.99, bins), True),
    "ShearY": (lambda bins: torch.linspace(0.0, 0.99, bins), True),
    "TranslateX": (lambda bins: torch.linspace(0.0, 32.0, bins), True),
    "TranslateY": (lambda bins: torch.linspace(0.0, 32.0, bins), True),
    "Rotate": (lambda bins: torch.linspace(0.0, 135.0, bins), True),
    "Brightness": (lambda bins: torch.linspace(0.0, 0.99, bins), True),
    "Color": (lambda bins: torch.linspace(0.0, 0.99, bins), True),
    "Contrast": (lambda bins: torch.linspace(0.0, 0.99, bins), True),
    "Sharpness": (lambda bins: torch.linspace(0.0, 0.99, bins), True),
    "Posterize": (lambda bins: (8 - (torch.arange(bins) / ((bins - 1) / 6))).round().int(), False),
    "Solarize": (lambda bins: torch.linspace(1.0, 0.0, bins), False),
    "AutoContrast": (None, False),
    "Equalize": (None, False),
}
_COLOR_CODES = {"Brightness": kernels.BRIGHTNESS, "Color": kernels.SATURATION, "Contrast": kernels.CONTRAST}


class TrivialAugmentWide:
    """TrivialAugmentWide: one operation per image, with a random magnitude bin (and sign)."""

    NAMES = tuple(_WIDE)

    def __init__(self, num_bins: int, fill: Sequence[int]) -> None:
        self.num_bins, self.fill = num_bins, fill
        self.magnitudes = {
            name: (fn(num_bins).double().numpy() if fn else None, signed) for name, (fn, signed) in _WIDE.items()
        }

    def draw(self, n: int, g: Generator = None) -> tuple[np.ndarray, np.ndarray]:
        """Each image's operation index (into NAMES) and signed magnitude."""
        op = torch.randint(len(self.NAMES), (n,), generator=g).numpy()
        bins = torch.randint(self.num_bins, (n,), generator=g).numpy()
        negative = (torch.rand(n, generator=g) <= 0.5).numpy()
        magnitude = np.zeros(n)
        for k, name in enumerate(self.NAMES):
            values, signed = self.magnitudes[name]
            rows = op == k
            if values is not None and rows.any():
                magnitude[rows] = values[bins[rows]] * np.where(signed & negative[rows], -1.0, 1.0)
        return op, magnitude

    def __call__(self, images: torch.Tensor, g: Generator = None) -> torch.Tensor:
        return self.apply(images, *self.draw(len(images), g))

    def apply(self, images: torch.Tensor, op: np.ndarray, magnitude: np.ndarray) -> torch.Tensor:
        """Apply operation ``NAMES[op[i]]`` with ``magnitude[i]`` to image i."""
        images = images.contiguous()
        names = np.array(self.NAMES)[op]
        height, width = images.shape[-2:]

        pixels = images.numpy()  # numpy copies whole rows when indexing the first axis (torch: per byte)

        def on(selected: np.ndarray, fn: Callable[[torch.Tensor, np.ndarray], torch.Tensor]) -> None:
            if selected.any():
                pixels[selected] = fn(torch.from_numpy(pixels[selected]), magnitude[selected]).numpy()

        geometric = np.isin(names, ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"))
        on(geometric, lambda sub, m: _warp(sub, self._geometry(names[geometric], m, width, height), self.fill))
        colour = np.isin(names, tuple(_COLOR_CODES))
        codes = np.array([_COLOR_CODES.get(name, kernels.SKIP) for name in names[colour]], dtype=np.int64)
        on(colour, lambda sub, m: _color(sub, codes[:, None], (1.0 + m[:, None]).astype(np.float32)))
        on(names == "Sharpness", lambda sub, m: _sharpen(sub, 1.0 + m))
        on(names == "Posterize", _posterize)
        on(names == "Solarize", lambda sub, m: torch.where(sub >= _threshold(m), 255 - sub, sub))
        on(names == "AutoContrast", lambda sub, m: F.autocontrast(sub))
        on(names == "Equalize", lambda sub, m: F.equalize(sub))
        return images

    @staticmethod
    def _geometry(names: np.ndarray, m: np.ndarray, width: int, height: int) -> np.ndarray:
        """One affine map per image; each image has one non-zero parameter. Shears turn about the
        top-left corner, as in torchvision (a centre does not change a translation's map)."""
        shear = np.degrees(np.arctan(m))
        sheared = np.isin(names, ("ShearX", "ShearY"))
        return inverse_affine(
            -np.where(names == "Rotate", m, 0.0),
            translate=(
                np.where(names == "TranslateX", np.trunc(m), 0.0),
                np.where(names == "TranslateY", np.trunc(m), 0.0),
            ),
            shear=(np.where(names == "ShearX", shear, 0.0), np.where(names == "ShearY", shear, 0.0)),
            center=(np.where(sheared, -width * 0.5, 0.0), np.where(sheared, -height * 0.5, 0.0)),
        )


def _sharpen(images: torch.Tensor, factors: np.ndarray) -> torch.Tensor:
    if images.shape[-1] > 2 and images.shape[-2] > 2:
        kernels.sharpen(images.numpy(), factors.astype(np.float32))
    return images


def _threshold(m: np.ndarray) -> torch.Tensor:
    # torchvision compares uint8 pixels with a float32 threshold of 255 * magnitude
    return torch.from_numpy((255.0 * m).astype(np.float32)).view(-1, 1, 1, 1)


def _posterize(images: torch.Tensor, bits: np.ndarray) -> torch.Tensor:
    keep = bits.astype(np.int64)
    masks = ((1 << keep) - 1) << (8 - keep)
    return images & torch.from_numpy(masks.astype(np.uint8)).view(-1, 1, 1, 1)


class Crop:
    """RandomCrop: optional padding (constant, edge or reflect), then a random window per image."""

    MODES = {"constant": "constant", "edge": "replicate", "reflect": "reflect"}

    def __init__(self, size: Sequence[int], padding: Sequence[int] | None, mode: str, fill: int) -> None:
        self.size, self.padding, self.mode, self.fill = tuple(size), padding, self.MODES[mode], fill

    def __call__(self, images: torch.Tensor, g: Generator = None) -> torch.Tensor:
        if self.padding:
            left, top, right, bottom = self.padding
            pad = (left, right, top, bottom)
            images = (
                torch.nn.functional.pad(images, pad, mode="constant", value=self.fill)
                if self.mode == "constant"
                else torch.nn.functional.pad(images, pad, mode=self.mode)
            )
        (h, w), (height, width) = self.size, images.shape[-2:]
        if height < h or width < w:
            raise ValueError(f"RandomCrop size {self.size} is larger than the (padded) image ({height}, {width})")
        tops = torch.randint(0, height - h + 1, (len(images),), generator=g).tolist()
        lefts = torch.randint(0, width - w + 1, (len(images),), generator=g).tolist()
        return torch.stack([img[:, t : t + h, x : x + w] for img, t, x in zip(images, tops, lefts, strict=True)])


class ResizedCrop:
    """RandomResizedCrop: a window of random area and aspect ratio per image, resized to ``size``.

    The window is drawn as torchvision draws it (ten tries, then a central crop), each image
    resized on its own (antialiased like torchvision's tensor kernel).
    """

    def __init__(self, t: v2.RandomResizedCrop) -> None:
        self.size, self.scale, self.ratio = list(t.size), t.scale, t.ratio
        self.interpolation, self.antialias = t.interpolation, t.antialias

    def window(self, height: int, width: int, g: Generator) -> tuple[int, int, int, int]:
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(*self.scale, generator=g))
            aspect = math.exp(float(torch.empty(1).uniform_(*log_ratio, generator=g)))
            w, h = round((target * aspect) ** 0.5), round((target / aspect) ** 0.5)
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=g))
                left = int(torch.randint(0, width - w + 1, (1,), generator=g))
                return top, left, h, w
        aspect = width / height  # fallback: the central crop of the nearest allowed aspect ratio
        if aspect < min(self.ratio):
            w, h = width, round(width / min(self.ratio))
        elif aspect > max(self.ratio):
            h, w = height, round(height * max(self.ratio))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, images: torch.Tensor, g: Generator = None) -> torch.Tensor:
        height, width = images.shape[-2:]
        return torch.stack(
            [
                F.resized_crop(
                    img,
                    *self.window(height, width, g),
                    size=self.size,
                    interpolation=self.interpolation,
                    antialias=self.antialias,
                )
                for img in images
            ]
        )


class Whole:
    """A deterministic transform (Resize, CenterCrop): one call for the whole batch."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.transform = transform

    def __call__(self, images: torch.Tensor, g: Generator = None) -> torch.Tensor:
        return torch.as_tensor(self.transform(images))


class Sequential:
    """The batch versions of a Compose's transforms, in order."""

    def __init__(self, ops: Sequence[BatchOp]) -> None:
        self.ops = list(ops)

    def __call__(self, images: torch.Tensor, g: Generator = None) -> torch.Tensor:
        for op in self.ops:
            images = op(images, g)
        return images


def _fill(value: Any, name: str) -> list[int] | str:
    if value is None:
        return [0]
    if isinstance(value, (int, float)):
        return [int(value)]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return [int(v) for v in value]
    return f"{name} with fill={value!r}"


def _nearest(transform: Any) -> bool:
    mode = transform.interpolation  # a string or an InterpolationMode, depending on how it was given
    return str(getattr(mode, "value", mode)) == "nearest"


def _convert(t: Any) -> BatchOp | str:
    """The batch version of one transform, or why there is none."""
    name = type(t).__name__
    if isinstance(t, (v2.RandomHorizontalFlip, v2.RandomVerticalFlip)):
        return Flip(t.p, 0 if isinstance(t, v2.RandomHorizontalFlip) else 1)
    if isinstance(t, v2.RandomRotation):
        fill = _fill(t.fill, name)
        if t.expand or t.center is not None or not _nearest(t):
            return f"{name} with expand, center or non-nearest interpolation"
        return fill if isinstance(fill, str) else Rotation(float(t.degrees[0]), float(t.degrees[1]), fill)
    if isinstance(t, v2.ColorJitter):
        return ColorJitter([t.brightness, t.contrast, t.saturation, t.hue])
    if isinstance(t, v2.TrivialAugmentWide):
        fill = _fill(t.fill, name)
        if not _nearest(t):
            return f"{name} with non-nearest interpolation"
        return fill if isinstance(fill, str) else TrivialAugmentWide(t.num_magnitude_bins, fill)
    if isinstance(t, v2.RandomCrop):
        if t.pad_if_needed or t.padding_mode not in Crop.MODES or not isinstance(t.fill, (int, float)):
            return f"{name} with pad_if_needed, padding_mode={t.padding_mode!r} or fill={t.fill!r}"
        return Crop(t.size, t.padding, t.padding_mode, int(t.fill))
    if isinstance(t, v2.RandomResizedCrop):
        return ResizedCrop(t)
    if isinstance(t, (v2.Resize, v2.CenterCrop, v2.Identity, v2.ToImage)):
        return Whole(t)
    return f"{name} (no batch version)"


def batch_transform(transform: Any) -> tuple[BatchOp | None, str | None]:
    """A batch version of ``transform`` (a v2 transform or Compose, or None: no augmentation),
    or (None, why there is none)."""
    if transform is None:
        return Sequential([]), None
    parts = transform.transforms if isinstance(transform, v2.Compose) else [transform]
    ops: list[Any] = []
    for part in parts:
        op = _convert(part)
        if isinstance(op, str):
            return None, op
        if ops and isinstance(ops[-1], Warp) and ops[-1].takes(op):
            ops[-1] = Warp([*ops[-1].parts, op])
        else:
            ops.append(Warp([op]) if isinstance(op, (Flip, Rotation)) else op)
    return Sequential(ops), None
