"""Picture galleries: thumbnails with their captions, a few rows per page so every caption stays readable.

A tile is one image or several side by side (a duplicate pair) above its caption lines; pages hold ``rows`` x
``columns`` tiles and are written as ``<name>-1.png``, ``<name>-2.png``, ... up to ``max_pages`` (the CSV lists
everything). Drawn with Pillow alone: a page of 48 tiles takes a fraction of a second.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

THUMB = 160  # pixels: the side of one thumbnail
FONT_SIZE = 13
LINE = FONT_SIZE + 3
PAD = 8


@dataclass(frozen=True)
class Tile:
    paths: tuple[str, ...]
    lines: tuple[str, ...]  # caption lines under the pictures


def thumbnail(path: str) -> Image.Image:
    """The image as a THUMB px square (its centre), or a grey square when the file does not load."""
    from imgclf.data.images import fit, load_image
    from imgclf.errors import ImgclfError

    try:
        return fit(load_image(path, draft=THUMB), THUMB, "keep_aspect")
    except (ImgclfError, OSError):
        return Image.new("RGB", (THUMB, THUMB), (128, 128, 128))


def write_gallery(
    folder: Path, name: str, tiles: Sequence[Tile], *, columns: int, rows: int, max_pages: int, title: str
) -> list[Path]:
    """Write the pages of ``tiles``; returns their paths (none when there are no tiles)."""
    from imgclf.atomic import write_atomic

    per_page = columns * rows
    pages = [tiles[i : i + per_page] for i in range(0, min(len(tiles), per_page * max_pages), per_page)]
    written = []
    for n, page in enumerate(pages):
        image = _page(page, columns, f"{title} ({n + 1}/{len(pages)}, {len(tiles)} in all)")
        path = folder / f"{name}-{n + 1}.png"
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=False)
        write_atomic(path, lambda f, data=buffer.getvalue(): f.write(data))
        written.append(path)
    return written


def _page(tiles: Sequence[Tile], columns: int, title: str) -> Image.Image:
    font = ImageFont.load_default(size=FONT_SIZE)
    width = max(len(t.paths) for t in tiles) * THUMB
    lines = max(len(t.lines) for t in tiles)
    cell_w, cell_h = width + PAD, THUMB + lines * LINE + PAD
    shown_rows = -(-len(tiles) // columns)
    page = Image.new("RGB", (PAD + columns * cell_w, 2 * LINE + PAD + shown_rows * cell_h), "white")
    draw = ImageDraw.Draw(page)
    draw.text((PAD, PAD // 2), title, fill="black", font=font)
    chars = max(8, int(width / (FONT_SIZE * 0.55)))  # what fits under the tile
    for k, tile in enumerate(tiles):
        x = PAD + (k % columns) * cell_w
        y = 2 * LINE + (k // columns) * cell_h
        for j, path in enumerate(tile.paths):
            page.paste(thumbnail(path), (x + j * THUMB, y))
        for j, text in enumerate(tile.lines):
            shown = text if len(text) <= chars else "..." + text[-(chars - 3) :]
            draw.text((x, y + THUMB + 2 + j * LINE), shown, fill="black", font=font)
    return page
