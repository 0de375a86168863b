"""What predict.py says about each file, and the forms it writes it in: the terminal table, ``--output`` CSV or JSON,
and ``--plot`` pages. Imports no torch: ``--model`` runs without it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.abstain import message
from imgclf.atomic import csv_text, write_text_atomic
from imgclf.filenames import shown

EXIT_USAGE = 2


@dataclass
class Prediction:
    """What predict says about one file: its top-k (class, probability), or why it has none."""

    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    low_confidence: bool = False
    not_sure: str | None = None  # why the model's thresholds leave it unanswered (imgclf.abstain), else None
    ood_score: float | None = None  # its OOD score (abstain.ood), when the model has an OOD threshold

    @property
    def label(self) -> str | None:
        return self.top[0][0] if self.top else None

    @property
    def confidence(self) -> float | None:
        return self.top[0][1] if self.top else None


def table(predictions: Sequence[Prediction], names: dict[str, str], min_confidence: float | None) -> str:
    """The terminal table: file, prediction, confidence, the other top-k classes."""

    def cells(p: Prediction) -> list[str]:
        if p.error is not None:
            return [shown(p.path), "ERROR", "", p.error]
        flag = f" (below {min_confidence:g})" if p.low_confidence else ""
        if p.not_sure is not None:  # the guesses, the first one included, go in the last column
            said = message(p.not_sure, [f"{names.get(c, c)} {v:.1%}" for c, v in p.top]) or ""
            return [shown(p.path), said.partition(":")[0], f"{p.confidence:.1%}{flag}", said.partition(": ")[2]]
        rest = ", ".join(f"{names.get(c, c)} {v:.1%}" for c, v in p.top[1:])
        return [shown(p.path), names.get(p.label, p.label), f"{p.confidence:.1%}{flag}", rest]

    rows = [["file", "prediction", "confidence", "next"]] + [cells(p) for p in predictions]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=False)) + "  " + r[3] for r in rows)


def to_csv(predictions: Sequence[Prediction], names: dict[str, str], top_k: int) -> str:
    """Columns: path, pred, name, confidence, low_confidence, not_sure, top1, p1 ... topK, pK, error. A "not sure"
    row has no pred, ``not sure`` as its name, why in ``not_sure`` (confidence, or ood) and its guesses in topK."""
    header = ["path", "pred", "name", "confidence", "low_confidence", "not_sure"]
    header += [f"{col}{i}" for i in range(1, top_k + 1) for col in ("top", "p")] + ["error"]

    def row(p: Prediction) -> list[str]:
        if p.error is not None:
            return [shown(p.path)] + [""] * (len(header) - 2) + [p.error]
        top = [cell for c, v in p.top for cell in (c, f"{v:.6f}")]
        return [
            shown(p.path),
            p.label if p.not_sure is None else "",
            names.get(p.label, p.label) if p.not_sure is None else "not sure",
            f"{p.confidence:.6f}",
            str(p.low_confidence).lower(),
            p.not_sure or "",
            *top,
            "",
        ]

    return csv_text(header, map(row, predictions))


def to_json(predictions: Sequence[Prediction], names: dict[str, str], checkpoint: Path) -> str:
    """``{"checkpoint": ..., "predictions": [{path, pred, name, confidence, low_confidence, not_sure,
    not_sure_reason, ood_score, top_k, error}]}``; a "not sure" record has ``pred`` and ``name`` null, its guesses in
    ``top_k``."""
    records = [
        {
            "path": shown(p.path),
            "pred": p.label if p.not_sure is None else None,
            "name": names.get(p.label, p.label) if p.label and p.not_sure is None else None,
            "confidence": p.confidence,
            "low_confidence": p.low_confidence,
            "not_sure": p.not_sure is not None,
            "not_sure_reason": p.not_sure,
            "ood_score": p.ood_score,
            "top_k": [{"class": c, "name": names.get(c, c), "probability": v} for c, v in p.top],
            "error": p.error,
        }
        for p in predictions
    ]
    return json.dumps({"checkpoint": str(checkpoint), "predictions": records}, indent=2) + "\n"


def plot(pages: Sequence[Sequence[tuple[Prediction, Any]]], names: dict[str, str], path: Path) -> list[Path]:
    """Write one PNG per page of (prediction, image) pairs; returns the files."""
    from imgclf.reporting import figures  # matplotlib only when a plot is asked for

    written = []
    for number, page in enumerate(pages, start=1):
        out = path if number == 1 else path.with_name(f"{path.stem}-{number}{path.suffix}")
        images = [np.asarray(image).transpose(1, 2, 0) for _, image in page]  # torch tensor or numpy array
        tops = [[(names.get(c, c), v) for c, v in p.top] for p, _ in page]
        captions = [
            shown(Path(p.path).name)
            + (" (not sure)" if p.not_sure else " (low confidence)" if p.low_confidence else "")
            for p, _ in page
        ]
        figures.save(figures.predictions_figure(images, tops, captions), out)
        written.append(out)
    return written


def write_outputs(
    args: argparse.Namespace,
    predictor: Any,
    predictions: Sequence[Prediction],
    pages: Sequence[Sequence[tuple[Prediction, Any]]],
    names: dict[str, str],
    top_k: int,
) -> int | None:
    """Write ``--output`` and ``--plot``; the exit status when one cannot be written (after saying why), else None."""
    try:
        if args.output is not None:
            text = (
                to_json(predictions, names, predictor.checkpoint)
                if args.output.suffix.lower() == ".json"
                else to_csv(predictions, names, top_k)
            )
            write_text_atomic(args.output, text)
            print(f"wrote {args.output}", file=sys.stderr)
        if args.plot is not None and pages[0]:
            args.plot.parent.mkdir(parents=True, exist_ok=True)
            print(f"wrote {', '.join(map(str, plot(pages, names, args.plot)))}", file=sys.stderr)
    except ModuleNotFoundError as exc:  # a torch-free install running --model: the figures need matplotlib, torch
        print(
            f"predict.py: error: --plot needs the package {exc.name!r} (the test report's figure code), which is "
            "not installed; leave --plot out or install imgclf with its training dependencies",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except OSError as exc:
        print(f"predict.py: error: cannot write {exc.filename or args.output}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    return None
