"""predict.py on a checkpoint: its backbone on onnxruntime (``--engine auto``) against eager PyTorch
(``--engine torch``).

    python benchmarks/predict_engine.py CHECKPOINT FOLDER [--limit 64] [--tta flip]

Three runs of ``python predict.py FOLDER --checkpoint CHECKPOINT`` on the same ``--limit`` images (a sorted
selection copied to a work folder), each a fresh process timed from launch to exit: ``--engine torch`` (the
baseline), ``--engine auto`` with an empty ``$XDG_CACHE_HOME`` (the backbone exported and checked first), and
``--engine auto`` again (the exported file found). It prints the seconds and images/s of each and the largest
difference of a probability between the onnxruntime runs and PyTorch's.

Measured (2026-12-07 evening, quiet machine) on the food101_mini ``transfer`` checkpoint (Lite0+1+2 at 384 px) with
64 test photos and ``--tta flip``: ``--engine torch`` 158.0 s (0.41 images/s), ``--engine auto`` 36.3 s with the
export (1.77 images/s, 4.4x) and 32.8 s with the kept file (1.95 images/s, 4.8x); probabilities within 8.9e-07 of
PyTorch's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--tta", default=None, help="predict.py --tta (default: none)")
    return parser.parse_args(argv)


def predict(args: argparse.Namespace, images: Path, engine: str, cache: Path, out: Path) -> float:
    command = [sys.executable, str(ROOT / "predict.py"), str(images), "--checkpoint", str(args.checkpoint)]
    command += ["--engine", engine, "--device", "cpu", "--output", str(out)]
    command += ["--tta", args.tta] if args.tta else []
    start = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, "XDG_CACHE_HOME": str(cache)}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def probabilities(path: Path) -> np.ndarray:
    rows = json.loads(path.read_text())["predictions"]
    return np.array([[c["probability"] for c in sorted(r["top_k"], key=lambda c: c["class"])] for r in rows])


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    files = sorted(f for f in args.folder.rglob("*") if f.suffix.lower() in SUFFIXES)[: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "images").mkdir()
        for i, f in enumerate(files):
            shutil.copy2(f, work / "images" / f"{i:05d}{f.suffix.lower()}")
        runs = [
            ("torch", "torch", work / "c0"),
            ("auto, empty cache", "auto", work / "c1"),
            ("auto, kept", "auto", work / "c1"),
        ]
        seconds, probs = [], []
        for i, (_, engine, cache) in enumerate(runs):
            out = work / f"run{i}.json"
            seconds.append(predict(args, work / "images", engine, cache, out))
            probs.append(probabilities(out))
    print(f"\n{args.checkpoint}: {len(files)} images, tta {args.tta or 'none'}, 2 CPU cores\n")
    print("| predict.py | seconds | images/s | max abs diff vs torch |\n|---|---:|---:|---:|")
    for (name, _, _), s, p in zip(runs, seconds, probs, strict=True):
        print(f"| --engine {name} | {s:.1f} | {len(files) / s:.2f} | {np.abs(p - probs[0]).max():.2g} |")


if __name__ == "__main__":
    main()
