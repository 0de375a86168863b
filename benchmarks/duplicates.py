"""Near-duplicates found, against a byte hash in the same run (issue 29).

    python benchmarks/duplicates.py PATH [--share 0.05] [--seed 0] [--recipe transfer] [--keep DIR]
                                         [--override key=value ...]

PATH is copied to a temporary folder and a seeded ``--share`` of its images gets a made copy (one of: resized
0.5-2x, re-encoded as JPEG at quality 30-95, a 10% crop, a mirror image, chosen at random) planted in another
split: a ``train/`` image's copy goes to ``test/<its class>/`` (or ``val/``), in a folder of class folders to
the same class folder under a new name (the carved splits put it where they put it). Then
``imgclf-audit -cn=<recipe> dataset.root=<copy> audit.include_test=true`` lists its pairs; the baseline is the
byte hash the doctor uses (identical files only). For both: the share of planted copies found, and the share of
reported pairs that are no planted copy (false pairs; pairs of files already duplicated in PATH do not count).

Measured (seed 0, share 0.05), before and after the pixel check (imgclf.audit.pixel_match) replaced the threshold
on the embeddings' similarity (0.75):

| folder | copies | byte hash found | audit found | audit pairs / false share | audit run |
|---|---|---|---|---|---|
| food101_mini (2026-12-06, embeddings >= 0.75) | 22 | 0.00 | 1.00 | 22 / 0.000 | ``--override model=lite0 --override dataset.native_scale=1`` |
| plates (2026-12-06, embeddings >= 0.75) | 2 | 0.00 | 0.50 | 5 / 0.800 | the full ``transfer`` recipe |
| plates (2026-12-07, 10 nearest + pixels >= 0.97) | 2 | 0.00 | 1.00 | 2 / 0.000 | the full ``transfer`` recipe |

plates is 40 photos of plates on one table: with the three backbones at 384 px a planted copy scored 0.63 and
different photos up to 0.84, so no threshold on the embeddings could list the copies alone; each copy was its
original's nearest image, and the pixels told copies (0.997 and 1.0) from different photos (0.963 at most).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def made_copy(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    kind = rng.integers(4)
    w, h = image.size
    if kind == 0:
        scale = float(rng.uniform(0.5, 2.0))
        return image.resize((max(8, round(w * scale)), max(8, round(h * scale)))), f"resized {scale:.2f}x"
    if kind == 1:
        quality = int(rng.integers(30, 96))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), f"JPEG quality {quality}"
    if kind == 2:
        dx, dy = w // 20, h // 20
        return image.crop((dx, dy, w - dx, h - dy)), "10% crop"
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "mirror image"


def plant(copy: Path, share: float, seed: int) -> dict[Path, Path]:
    """Plant made copies; {copy's path: original's path}."""
    rng = np.random.default_rng(seed)
    source = copy / "train" if (copy / "train").is_dir() else copy
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    chosen = rng.choice(len(files), size=max(1, round(share * len(files))), replace=False)
    planted = {}
    for i in sorted(chosen):
        original = files[i]
        image, _ = made_copy(Image.open(original).convert("RGB"), rng)
        split = "test" if (copy / "test").is_dir() else "val" if (copy / "val").is_dir() else None
        folder = copy / split / original.parent.name if split and source != copy else original.parent
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"copy-{original.stem}.png"
        image.save(target)
        planted[target.resolve()] = original.resolve()
    return planted


def byte_pairs(copy: Path) -> set[frozenset[Path]]:
    groups = defaultdict(list)
    for p in copy.rglob("*"):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            groups[hashlib.sha1(p.read_bytes()).hexdigest()].append(p.resolve())
    return {frozenset((a, b)) for g in groups.values() for i, a in enumerate(g) for b in g[i + 1 :]}


def audit_pairs(copy: Path, work: Path, recipe: str, overrides: Sequence[str]) -> tuple[set[frozenset[Path]], float]:
    command = [
        sys.executable,
        "-c",
        "from imgclf.cli.audit import main; main()",
        f"-cn={recipe}",
        f"dataset.root={copy}",
        "experiment=duplicates",
        f"paths.experiments={work / 'experiments'}",
        f"paths.runs={work / 'runs'}",
        "progress=false",
        "audit.include_test=true",
        *overrides,
    ]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"imgclf-audit failed ({result.returncode}):\n{result.stderr[-3000:]}")
    with open(work / "experiments" / "duplicates" / "audit" / "duplicates.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    pairs = {frozenset(((copy / r["path_a"]).resolve(), (copy / r["path_b"]).resolve())) for r in rows}
    return pairs, time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", default="transfer")
    parser.add_argument("--keep", type=Path)
    parser.add_argument("--override", action="append", default=[])
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="duplicates."))
    copy = work / args.path.name
    shutil.rmtree(copy, ignore_errors=True)
    shutil.rmtree(work / "experiments", ignore_errors=True)
    shutil.copytree(args.path, copy)
    already = byte_pairs(copy)  # duplicates PATH holds itself: neither planted nor false
    planted = plant(copy, args.share, args.seed)
    wanted = {frozenset((a, b)) for a, b in planted.items()}
    start = time.perf_counter()
    hashed = byte_pairs(copy)
    rows = {"byte hash (identical files)": (hashed, time.perf_counter() - start)}
    rows[f"imgclf-audit -cn={args.recipe}"] = audit_pairs(copy, work, args.recipe, args.override)
    print(f"{args.path.name}: {len(planted)} made copies planted")
    print("\n| method | planted copies found | pairs reported | false pairs | seconds |")
    print("|---|---|---|---|---|")
    for name, (pairs, seconds) in rows.items():
        counted = pairs - already
        false = [p for p in counted if p not in wanted and not (p & set(planted) and len(p & set(planted)) == 2)]
        print(
            f"| {name} | {len(wanted & pairs) / len(wanted):.2f} | {len(pairs)} "
            f"| {len(false) / max(1, len(counted)):.3f} | {seconds:.0f} |"
        )
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
