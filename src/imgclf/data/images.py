"""The one image loader used by train, test and predict.

It applies the EXIF orientation, converts every Pillow mode to RGB deliberately and rejects
files that would make training fail later (truncated, not an image, absurd sizes), always
naming the file.

This module imports no torch (only :func:`serve` does, when called): the ONNX predictor decodes
with this very code in a process that never loads torch.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgclf.errors import DataError

if TYPE_CHECKING:
    import torch

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".jfif"})
MAX_PIXELS = 89_478_485  # Pillow's own default bomb limit (about 0.25 GB of RGB)
# predict's (and a web endpoint's) limit on the pixels it decodes. Decoding takes up to ~24 bytes per pixel (a
# palette PNG with transparency goes through RGBA and a composite: a 10 KB 9000x9000 file peaks at 2.0 GB and
# 6.5 s), and predict decodes several files at once: 40 MP keeps one file near 1 GB. It counts the pixels
# actually decoded, so camera JPEGs pass (a 48 MP one decodes at 1/8 scale, 1000x750, for a 256 px model input);
# PNG, TIFF, WebP or BMP files over 40 MP (e.g. 7300x5500) are refused.
PREDICT_MAX_PIXELS = 40_000_000
MAX_ASPECT_RATIO = 50.0  # a 20000x2 strip through a resize becomes a huge tensor
MIN_SIDE = 2
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
# how a photo becomes the square the model is fed: squash (both sides resized to the square: the aspect
# ratio is lost) | keep_aspect (the shorter side resized to the square, the centre kept: nothing is stretched)
RESIZE_MODES = ("squash", "keep_aspect")


def load_image(
    path: str | Path, *, data: bytes | None = None, draft: int | None = None, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """Read an image file fully and return it as an RGB Pillow image (see :func:`open_image`)."""
    return open_image(path, data=data, draft=draft, max_pixels=max_pixels)[0]


def open_image(
    path: str | Path, *, data: bytes | None = None, draft: int | None = None, max_pixels: int = MAX_PIXELS
) -> tuple[Image.Image, tuple[int, int]]:
    """Read an image file fully; return it as an RGB Pillow image, and its stored size.

    Args:
        path: the file (named in errors; read unless ``data`` is given).
        data: the file's bytes, when the caller has read them already.
        draft: let JPEG decoding scale down by a power of two while keeping both sides >= this
            (much faster when the image is resized to a small working size anyway).
        max_pixels: larger images are rejected as decompression bombs.

    Raises:
        DataError: the file cannot be decoded or has an unusable size; the message names it.
    """
    path = Path(path)
    with _read_errors_named(path), Image.open(io.BytesIO(data) if data is not None else path) as img:
        stored_size = img.size
        _check_size(path, img.size, max_pixels)
        img.seek(0)  # first frame of animations
        if draft is not None and img.format == "JPEG":
            img.draft("RGB", (draft, draft))
        img.load()  # decode everything now: a truncated file fails here, by name
        img = ImageOps.exif_transpose(img)
        return to_rgb(img), stored_size


def check_decoded_pixels(
    path: str | Path,
    max_pixels: int,
    *,
    data: bytes | None = None,
    draft: int | None = None,
    setting: str = "max_pixels",
) -> tuple[int, int]:
    """Refuse an image that would decode to more than ``max_pixels``, from its header alone (``Image.open``
    reads no pixel data); returns the (width, height) it decodes to.

    Args:
        path: the file (named in errors; read unless ``data`` is given).
        max_pixels: the limit, lower than the training one for predict and web endpoints.
        data: the file's bytes, when the caller has read them already.
        draft: as in :func:`open_image`: a JPEG is decoded at the reduced scale this allows, so its
            decoded size counts, not its stored one.
        setting: how the user raises the limit, named in the message.

    Raises:
        DataError: the decoded size is over ``max_pixels``, Pillow warns of a decompression bomb, or the
            header cannot be read; the message names the file, its size and the limit.
    """
    path = Path(path)
    with _read_errors_named(path), Image.open(io.BytesIO(data) if data is not None else path) as img:
        stored = img.size
        if draft is not None and img.format == "JPEG":
            img.draft("RGB", (draft, draft))
        width, height = img.size
    if width * height > max_pixels:
        scaled = f" (decoded at {width}x{height})" if (width, height) != stored else ""
        raise DataError(
            f"{path}: {stored[0]}x{stored[1]} pixels{scaled} is {width * height / 1e6:.1f} megapixels, "
            f"over the limit of {max_pixels} pixels ({setting}); downscale the image, or raise "
            f"{setting} if the memory allows (decoding takes up to ~24 bytes per pixel)"
        )
    return width, height


@contextmanager
def _read_errors_named(path: Path) -> Iterator[None]:
    """Pillow's errors (and its decompression-bomb warning, as an error) as a DataError naming ``path``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: rejected as a decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:  # its message names a BytesIO, not the file
        raise DataError(
            f"{path}: cannot be read: not an image file (Pillow recognizes no image format in it); "
            "remove or replace the file"
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot be read as an image ({exc}); remove or replace the file") from exc


def _check_size(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise DataError(f"{path}: {width}x{height} pixels is over the limit of {max_pixels}")
    if min(width, height) < MIN_SIDE:
        raise DataError(f"{path}: {width}x{height} is too small to be a training image")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise DataError(f"{path}: aspect ratio {width}x{height} is over {MAX_ASPECT_RATIO:.0f}:1; crop or remove it")


def stored_size(path: str | Path) -> tuple[int, int] | None:
    """An image file's (width, height) from its header, without decoding it; None when it cannot be read
    (the decoding pass reports why)."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def stored_sizes(paths: list[str], workers: int = 8) -> list[tuple[int, int] | None]:
    """:func:`stored_size` of every file, read by a few threads (header reads wait on the disk)."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(stored_size, paths))


def fit(img: Image.Image, size: int, resize: str = "squash") -> Image.Image:
    """``img`` as a ``size`` x ``size`` square (see :data:`RESIZE_MODES`), resampled once (bilinear)."""
    width, height = img.size
    box = None
    if resize == "keep_aspect" and width != height:
        side = min(width, height)  # the centre square, cut and resized in one resampling
        left, top = (width - side) / 2, (height - side) / 2
        box = (left, top, left + side, top + side)
    if img.size == (size, size) and box is None:
        return img
    return img.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=None)


def decode_bytes(data: bytes, path: str, image_size: int, resize: str = "squash") -> tuple[np.ndarray, tuple[int, int]]:
    """Decode one image to (size, size, 3) uint8 (see :data:`RESIZE_MODES`); also returns its stored size.

    What the training cache stores for every file, and what predict (torch or ONNX) decodes."""
    img, original = open_image(path, data=data, draft=2 * image_size)
    return np.array(fit(img, image_size, resize), dtype=np.uint8), original  # a writable copy


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` of an (H, W, C) array, at the offsets torchvision's ``CenterCrop`` uses
    (``int(round((H - size) / 2))``), so the ONNX predictor feeds the pixels the torch one does."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    if height < size or width < size:
        raise ValueError(f"cannot crop {size}x{size} from a {width}x{height} image")
    top, left = round((height - size) / 2.0), round((width - size) / 2.0)
    return image[top : top + size, left : left + size]


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without clipping or black transparency."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale the real range to 0..255 instead of clipping to white.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        return Image.fromarray(arr.round().astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "P" or img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


Transform = Callable[[Any], Any]


def serve(image: np.ndarray, transform: Transform | None) -> torch.Tensor:
    """Turn one (H, W, 3) uint8 image into the (3, H, W) uint8 tensor a batch is made of.

    The per-image path (predict, and training when the augmentation has no batch version, see
    ``batch_augment.py``). Augmentations see a Pillow image, as in torchvision's own recipes: Pillow runs flips,
    rotations and colour changes in C on uint8 (about twice as fast as the same v2 transforms
    on tensors), and the results equal those of a pipeline that augments freshly decoded files.
    A transform may also return a tensor (e.g. one that ends with ``v2.ToImage()``).
    """
    import torch  # here, not at the top: the ONNX predictor imports this module without torch

    if transform is None:
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    out = transform(Image.fromarray(np.asarray(image)))
    if isinstance(out, Image.Image):
        return torch.from_numpy(np.array(out.convert("RGB") if out.mode != "RGB" else out)).permute(2, 0, 1)
    if not isinstance(out, torch.Tensor) or out.dtype != torch.uint8 or out.ndim != 3:
        raise TypeError(
            "augmentation must return a Pillow image or a (3, H, W) uint8 tensor: "
            "leave float conversion and Normalize out (the model normalizes its inputs)"
        )
    return out
