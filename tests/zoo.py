"""A dataset folder holding every kind of file users bring: good images in every Pillow mode,
unusable files, and files that must be skipped. Used by the data and doctor tests."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import draw

# file name -> words its error must contain
BAD = {
    "truncated.jpg": "cannot be read",
    "empty.jpg": "cannot be read",
    "text.jpg": "cannot be read",
    "bomb.png": "decompression bomb",
    "pixel.png": "too small",
    "strip.png": "aspect ratio",
}
GOOD = (
    "cmyk.jpg",
    "gray16.png",
    "rgba.png",
    "palette.png",
    "anim.gif",
    "rotated.jpg",
    "upper.JPG",
    "long.jpeg",
    "la.png",
    "plain.jpfif.jfif",
)
IGNORED = {
    ".DS_Store": ".DS_Store",
    "._plain.jpg": "._* (macOS metadata)",
    "notes.txt": ".txt",
    "photo.heic": ".heic",
    "Thumbs.db": "Thumbs.db",
    "noext": "(no extension)",
    ".hidden.png": "hidden files",
}


def huge_png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


def write_good(folder: Path, rng: np.random.Generator) -> None:
    base = draw(0, rng, 32)
    base.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257).save(folder / "gray16.png")
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    base.convert("LA").save(folder / "la.png")
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(folder / "palette.png", transparency=0)
    frames = [base, draw(1, rng, 32)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.asarray(base)[:, :20]).save(folder / "rotated.jpg", exif=exif)  # 20x32 stored
    base.save(folder / "upper.JPG")
    base.save(folder / "long.jpeg")
    base.save(folder / "plain.jpfif.jfif", format="JPEG")


def write_bad(folder: Path, rng: np.random.Generator) -> None:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[:300])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("just text with a .jpg name")
    (folder / "bomb.png").write_bytes(huge_png_header(50_000, 50_000))
    Image.new("RGB", (1, 1)).save(folder / "pixel.png")
    Image.new("RGB", (400, 2)).save(folder / "strip.png")


def write_ignored(folder: Path) -> None:
    for name in IGNORED:
        (folder / name).write_bytes(b"not for training")


def make_zoo(root: Path, seed: int = 0) -> Path:
    """root/train/{circle,square}/... with every kind of file in circle/, plus tool folders."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", 6), ("val", 2), ("test", 2)):
        for kind, name in enumerate(("circle", "square")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw(kind, rng, 32).save(folder / f"{i}.png")
    circle = root / "train" / "circle"
    write_good(circle, rng)
    write_bad(circle, rng)
    write_ignored(circle)
    for tool in (".ipynb_checkpoints", "__MACOSX", ".git"):
        (root / "train" / tool).mkdir()
        draw(2, rng, 32).save(root / "train" / tool / "x.png")
    return root
