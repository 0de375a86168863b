"""Which checkpoint ``--experiment NAME`` means, for the command-line programs (no torch: predict's ONNX path
imports this too)."""

from __future__ import annotations

from pathlib import Path

from imgclf.errors import ImgclfError
from imgclf.experiment.names import check_name


def best_checkpoint(experiments: Path, name: str, instead: str) -> Path:
    """``<experiments>/<name>/best.pt``; when it is missing, an error listing the experiments that have one.

    Args:
        instead: the options the message offers instead, e.g. ``--checkpoint FILE, --experiments-dir DIR``.
    """
    path = experiments / check_name(name, "--experiment ") / "best.pt"  # `..` or `a/b`: never outside `experiments`
    if path.is_file():
        return path
    there = sorted(p.parent.name for p in experiments.glob("*/best.pt")) if experiments.is_dir() else []
    hint = (
        f"experiments with a best.pt in {experiments}: {', '.join(there)}"
        if there
        else f"{experiments} holds no trained experiment; train one with `python train.py`"
    )
    raise ImgclfError(f"no checkpoint {path}: {hint} (or pass {instead})")
