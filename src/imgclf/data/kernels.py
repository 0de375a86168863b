"""Compiled (numba) pixel loops for augmenting uint8 image batches on the CPU.

Each function works on a whole batch of shape (B, 3, H, W) with one parameter per image, and
follows torchvision's uint8 tensor kernels (``torchvision.transforms.v2.functional``): the same
formulas, clamping and rounding, computed in float32. They exist because the same work written
as PyTorch tensor operations is memory-bound (a hue shift costs about 0.6 ms per 128 px image on
one core, in Pillow 0.5 ms, here 0.02 ms): one pass per pixel keeps an image in the CPU cache.
Results may differ from torchvision's by one intensity level where float rounding differs.

Functions compile on first use and the machine code is cached next to this file.
"""

from __future__ import annotations

import numba
import numpy as np

# colour operation codes of :func:`color_ops`
SKIP, BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3, 4

_jit = numba.njit(cache=True, nogil=True)

# torchvision's grayscale weights (ITU-R 601-2) and its float -> uint8 scale
_WR, _WG, _WB = np.float32(0.2989), np.float32(0.587), np.float32(0.114)
_TO_U8 = np.float32(255.0 + 1.0 - 1e-3)


@_jit
def _u8(value):
    """Clamp to [0, 255] and truncate, as ``tensor.clamp_(0, 255).to(torch.uint8)`` does."""
    return np.uint8(min(max(value, np.float32(0.0)), np.float32(255.0)))


@_jit
def _gray(r, g, b):
    return np.floor(np.float32(r) * _WR + np.float32(g) * _WG + np.float32(b) * _WB)


@_jit
def _hue(px, shift):
    """Rotate the hue of (3, N) pixels by ``shift`` turns (torchvision's adjust_hue).

    The hue h in [0, 6) of each pixel moves round the HSV hexcone; the largest and smallest
    channel values stay. Written flat, with no helper calls, so that the loop vectorizes.
    """
    scale, six = np.float32(1.0 / 255.0), np.float32(6.0)
    turn = np.float32(shift) * six
    if turn < 0:
        turn += six
    for i in range(px.shape[1]):
        r, g, b = np.float32(px[0, i]) * scale, np.float32(px[1, i]) * scale, np.float32(px[2, i]) * scale
        top, low = max(r, g, b), min(r, g, b)
        spread = top - low
        if spread == 0:
            continue  # grey: no hue
        if top == r:
            h = (g - b) / spread
        elif top == g:
            h = (b - r) / spread + np.float32(2.0)
        else:
            h = (r - g) / spread + np.float32(4.0)
        h += turn
        if h < 0:
            h += six
        if h >= six:
            h -= six
        if h >= six:
            h -= six
        k = h + np.float32(5.0)  # red
        if k >= six:
            k -= six
        w = max(min(k, np.float32(4.0) - k, np.float32(1.0)), np.float32(0.0))
        px[0, i] = np.uint8((top - spread * w) * _TO_U8)
        k = h + np.float32(3.0)  # green
        if k >= six:
            k -= six
        w = max(min(k, np.float32(4.0) - k, np.float32(1.0)), np.float32(0.0))
        px[1, i] = np.uint8((top - spread * w) * _TO_U8)
        k = h + np.float32(1.0)  # blue
        if k >= six:
            k -= six
        w = max(min(k, np.float32(4.0) - k, np.float32(1.0)), np.float32(0.0))
        px[2, i] = np.uint8((top - spread * w) * _TO_U8)


@_jit
def _blend_gray(px, factor, per_pixel):
    """``x * f + grey * (1 - f)``: saturation (grey of each pixel) or contrast (mean grey)."""
    f = np.float32(factor)
    rest = np.float32(1.0) - f
    n = px.shape[1]
    mean = np.float32(0.0)
    if not per_pixel:
        total = 0  # whole grey levels: an exact integer sum
        for i in range(n):
            total += np.int64(_gray(px[0, i], px[1, i], px[2, i]))
        mean = np.float32(total / n)
    if per_pixel:
        for i in range(n):
            grey = _gray(px[0, i], px[1, i], px[2, i]) * rest
            px[0, i] = _u8(np.float32(px[0, i]) * f + grey)
            px[1, i] = _u8(np.float32(px[1, i]) * f + grey)
            px[2, i] = _u8(np.float32(px[2, i]) * f + grey)
    else:
        grey = mean * rest
        for c in range(3):
            for i in range(n):
                px[c, i] = _u8(np.float32(px[c, i]) * f + grey)


@_jit
def color_ops(images, ops, factors):
    """Apply colour operations in place, in each image's own order.

    Args:
        images: uint8 (B, 3, N): N pixels per image (H * W, contiguous).
        ops: int (B, K): the operation codes (SKIP, BRIGHTNESS, ...) to apply to each image, in order.
        factors: float (B, K): each operation's factor (a hue shift in turns for HUE).
    """
    for b in range(images.shape[0]):
        px = images[b]
        for k in range(ops.shape[1]):
            op, factor = ops[b, k], factors[b, k]
            if op == BRIGHTNESS:
                f = np.float32(factor)
                for c in range(3):
                    for i in range(px.shape[1]):
                        px[c, i] = _u8(np.float32(px[c, i]) * f)
            elif op == CONTRAST:
                _blend_gray(px, factor, False)
            elif op == SATURATION:
                _blend_gray(px, factor, True)
            elif op == HUE:
                _hue(px, factor)


@_jit
def sharpen(images, factors):
    """torchvision's adjust_sharpness in place: blend with a 3x3 smoothing of the interior pixels.

    Args:
        images: uint8 (B, 3, H, W).
        factors: float (B,): 0 gives the smoothed image, 1 the original, 2 a sharpened one.
    """
    a, b5 = np.float32(1.0 / 13.0), np.float32(5.0 / 13.0)
    height, width = images.shape[2], images.shape[3]
    for n in range(images.shape[0]):
        rest = np.float32(1.0) - np.float32(factors[n])
        for c in range(3):
            src = images[n, c].copy()
            for y in range(1, height - 1):
                for x in range(1, width - 1):
                    ring = (
                        np.float32(src[y - 1, x - 1])
                        + np.float32(src[y - 1, x])
                        + np.float32(src[y - 1, x + 1])
                        + np.float32(src[y, x - 1])
                        + np.float32(src[y, x + 1])
                        + np.float32(src[y + 1, x - 1])
                        + np.float32(src[y + 1, x])
                        + np.float32(src[y + 1, x + 1])
                    )
                    blurred = np.rint(ring * a + np.float32(src[y, x]) * b5)
                    value = np.float32(src[y, x])
                    images[n, c, y, x] = _u8(value + rest * (blurred - value))


@_jit
def affine_nearest(images, theta, fill):
    """Warp each image by an affine map with nearest-neighbour sampling (torchvision's F.affine).

    Args:
        images: uint8 (B, 3, H, W), any strides (e.g. a channels-last array seen as (B, 3, H, W)).
        theta: float (B, 6): for each image the inverse map (a, b, c, d, e, f), from an output pixel
            (x, y) to its source (a x + b y + c, d x + e y + f), in coordinates centred on the image.
        fill: uint8 (3,): the value of pixels that map outside the image.

    Returns:
        A new contiguous uint8 (B, 3, H, W) array. Sources are rounded half up (torchvision rounds
        half to even: the two differ only at exact half-pixel ties).
    """
    count, _, height, width = images.shape
    out = np.empty((count, 3, height, width), dtype=np.uint8)
    cx, cy = (width - 1) * 0.5, (height - 1) * 0.5
    for n in range(count):
        a, b, c, d, e, f = theta[n, 0], theta[n, 1], theta[n, 2], theta[n, 3], theta[n, 4], theta[n, 5]
        for i in range(height):
            y = i - cy
            # source position of pixel (i, j) in pixel units, plus 0.5 so that truncation rounds
            row_x = b * y + c + cx - a * cx + 0.5
            row_y = e * y + f + cy - d * cx + 0.5
            for j in range(width):
                sx, sy = a * j + row_x, d * j + row_y
                if 0.0 <= sx < width and 0.0 <= sy < height:
                    u, v = int(sy), int(sx)
                    out[n, 0, i, j], out[n, 1, i, j], out[n, 2, i, j] = (
                        images[n, 0, u, v],
                        images[n, 1, u, v],
                        images[n, 2, u, v],
                    )
                else:
                    out[n, 0, i, j], out[n, 1, i, j], out[n, 2, i, j] = fill[0], fill[1], fill[2]
    return out
