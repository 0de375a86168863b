"""Is a pair of look-alike images the same photo? A pixel check of the embeddings' candidate pairs.

Embeddings find images that look alike, and that includes two photos of one kind of flower, or of one plate on one
table, shot a moment apart. A copy of a photo (resized, re-encoded, cropped a little, mirrored) is more: once
aligned, it matches the original pixel for pixel. Each candidate pair is compared as small grey thumbnails by
Pearson correlation (blind to a change of brightness or contrast, to JPEG noise and to resizing), over the mirror
image and over crop windows of either image (the part a cropped copy kept), and the best alignment counts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from imgclf.data.images import to_rgb

SIDE = 32  # the compared thumbnails' side: enough to tell two scenes apart, coarse enough to ignore JPEG noise
GRID = 96  # the side the image is first brought to, on which crop windows are cut
SCALES = (0.9, 0.8)  # window sides as a share of the image's: a copy cropped by up to 20% of each side
POSITIONS = 3  # window positions per axis: left/centre/right, top/middle/bottom

log = logging.getLogger(__name__)


class Thumbnails:
    """One image's thumbnails as unit vectors: ``views`` (2, SIDE*SIDE), the whole image and its mirror image;
    ``windows`` (1 + 2 x 9, SIDE*SIDE), the whole image and its crop windows. Kept as float16 (40 KB an image: every
    candidate's thumbnails stay in memory while the pairs are compared), compared in float32."""

    def __init__(self, image: Image.Image) -> None:
        grid = image.convert("L").resize((GRID, GRID), Image.Resampling.BOX)
        whole = _unit(grid)
        self.views = np.stack([whole, _unit(grid.transpose(Image.Transpose.FLIP_LEFT_RIGHT))]).astype(np.float16)
        crops = [whole]
        for scale in SCALES:
            side = round(GRID * scale)
            for top in np.linspace(0, GRID - side, POSITIONS).round().astype(int):
                for left in np.linspace(0, GRID - side, POSITIONS).round().astype(int):
                    crops.append(_unit(grid.crop((left, top, left + side, top + side))))
        self.windows = np.stack(crops).astype(np.float16)

    @classmethod
    def of_file(cls, path: str | Path) -> Thumbnails:
        """The thumbnails of an image file, upright as its EXIF orientation says (as the images are loaded)."""
        with Image.open(path) as image:
            image.draft("RGB", (GRID * 2, GRID * 2))  # JPEG: decode at a reduced size, several times faster
            return cls(to_rgb(ImageOps.exif_transpose(image)))  # 16-bit and float scaled as the loader does


def _unit(image: Image.Image) -> np.ndarray:
    """The thumbnail's grey levels with their mean removed, scaled to length one (a flat image: all zeros)."""
    pixels = np.asarray(image.resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.float64).ravel()
    pixels = pixels - pixels.mean()
    norm = np.linalg.norm(pixels)
    return pixels / norm if norm > 1e-6 else np.zeros_like(pixels)


def correlation(a: Thumbnails, b: Thumbnails) -> float:
    """The best Pearson correlation of the two images' grey levels over the alignments a copy can have: either
    image whole or cropped, against the other whole or mirrored (-1 to 1; a copy scores near 1)."""

    def f32(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32)

    return float(max((f32(a.windows) @ f32(b.views).T).max(), (f32(b.windows) @ f32(a.views).T).max()))


def correlations(files: Sequence[str | Path], pairs: Sequence[tuple[int, int]]) -> list[float]:
    """The correlation of each pair of ``files`` (indices), every file read once. A file that can no longer be read
    (moved or changed since it was listed) is said once in the log, and its pairs score -1: never listed."""
    thumbnails: dict[int, Thumbnails | None] = {}
    for i in sorted({i for pair in pairs for i in pair}):
        try:
            thumbnails[i] = Thumbnails.of_file(files[i])
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            log.warning("duplicates: %s cannot be read again (%s); it is compared with no other image", files[i], exc)
            thumbnails[i] = None
    return [
        correlation(ta, tb) if (ta := thumbnails[a]) is not None and (tb := thumbnails[b]) is not None else -1.0
        for a, b in pairs
    ]
