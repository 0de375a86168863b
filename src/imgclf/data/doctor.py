"""The dataset doctor's report: counts, image sizes, bad files, ignored files, duplicates and
leakage, as JSON-able data and as a table. Used by ``imgclf-doctor`` and at the start of training."""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from statistics import median
from typing import Any

from imgclf.atomic import write_text_atomic
from imgclf.data.cache import DecodeCache, FileReport
from imgclf.data.folder import FolderSource, Splits
from imgclf.filenames import shown_in

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
EXAMPLES = 10


def examine(splits: Splits, reports: dict[str, FileReport], *, root: str, bad_files: str = "stop") -> dict[str, Any]:
    """Build the doctor's report for ``splits`` from one pass over their files (``reports``)."""
    counts = {name: Counter(splits.classes[label] for _, label in splits.samples.get(name, [])) for name in SPLITS}
    bad = [
        {"split": name, "path": r.paths[i], "reason": reason}
        for name, r in reports.items()
        for i, reason in sorted(r.errors.items())
    ]
    duplicates, leakage = same_bytes(reports)
    report: dict[str, Any] = {
        "root": root,
        "layout": splits.layout,
        "classes": splits.classes,
        "counts": {name: {c: counts[name][c] for c in splits.classes} for name in SPLITS},
        "image_sizes": _sizes(reports),
        "bad_files": bad,
        "bad_file_policy": bad_files,
        "ignored_by_extension": dict(sorted(splits.ignored.items())),
        "skipped": list(splits.skipped),  # links and special files passed over, named
        "unused_folders": list(splits.unused),  # top-level folders of a split layout that are no split: not read
        "carving": dict(splits.carving),  # split -> why a fraction carved no image of a class (its rounding)
        "duplicates": duplicates,
        "leakage": leakage,
    }
    report["usable"] = {name: _usable(splits, reports, name) for name in SPLITS}
    report["blocking"] = _blocking(report)
    return shown_in(report)  # a name that is not UTF-8 with its odd bytes as \\xNN: for JSON, logs, messages (J9)


def diagnose(source: FolderSource, cache: DecodeCache, *, bad_files: str = "stop") -> dict[str, Any]:
    """Scan ``source`` and read every file once (reports are cached by file list)."""
    splits = source.scan()
    reports = {
        name: cache.load([p for p, _ in splits.samples.get(name, [])], None, desc=f"check {name}")[1] for name in SPLITS
    }
    return examine(splits, reports, root=str(source.root), bad_files=bad_files)


def _usable(splits: Splits, reports: dict[str, FileReport], name: str) -> dict[str, int]:
    errors = reports[name].errors if name in reports else {}
    usable = Counter(
        splits.classes[label] for i, (_, label) in enumerate(splits.samples.get(name, [])) if i not in errors
    )
    return {c: usable[c] for c in splits.classes}


def same_bytes(reports: dict[str, FileReport]) -> tuple[list[list[str]], list[list[str]]]:
    """Groups of identical files ("split:path"): within one split (duplicates), across splits (leakage)."""
    where: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name, r in reports.items():
        for path, digest in zip(r.paths, r.digests, strict=True):
            if digest is not None:
                where[digest].append((name, path))
    groups = [places for places in where.values() if len(places) > 1]
    leakage = [[f"{s}:{p}" for s, p in g] for g in groups if len({s for s, _ in g}) > 1]
    duplicates = [[f"{s}:{p}" for s, p in g] for g in groups if len({s for s, _ in g}) == 1]
    return duplicates, leakage


def warn_about_leaks(report: dict[str, Any]) -> None:
    """Log the doctor report's leakage loudly: test results would look better than they are."""
    if report["leakage"]:
        log.warning(
            "%d image(s) appear in more than one split (identical files), e.g. %s; "
            "test results will look better than they are",
            len(report["leakage"]),
            " and ".join(report["leakage"][0]),
        )


def _sizes(reports: dict[str, FileReport]) -> dict[str, Any]:
    sizes = [tuple(s) for r in reports.values() for s in r.sizes if s is not None]
    if not sizes:
        return {}
    widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
    return {
        "images": len(sizes),
        "width": {"min": min(widths), "median": median(widths), "max": max(widths)},
        "height": {"min": min(heights), "median": median(heights), "max": max(heights)},
        "most_common": [[w, h, n] for (w, h), n in Counter(sizes).most_common(5)],
    }


def _blocking(report: dict[str, Any]) -> list[str]:
    reasons = []
    if report["bad_files"] and report["bad_file_policy"] == "stop":
        reasons.append(f"{len(report['bad_files'])} unusable file(s) (dataset.bad_files=stop)")
    for name, n in report["usable"]["train"].items():
        if n == 0:
            reasons.append(f"class '{name}' has no usable training image")
    if not sum(report["usable"]["val"].values()):
        reasons.append(
            "no val image"
            + (
                f": {report['carving']['val']}"
                if report.get("carving", {}).get("val")
                else " (training needs a val/ folder or dataset.val_fraction > 0)"
            )
        )
    return reasons


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table and lists."""
    classes = report["classes"]
    width = max([len(c) for c in classes] + [5])
    lines = [
        f"dataset {report['root']} ({report['layout']}), {len(classes)} classes",
        f"{'class':{width}}  {'train':>7} {'val':>7} {'test':>7}",
    ]
    for name in classes + ["total"]:
        row = [sum(report["counts"][s].values()) if name == "total" else report["counts"][s][name] for s in SPLITS]
        lines.append(f"{name:{width}}  {row[0]:7d} {row[1]:7d} {row[2]:7d}")
    sizes = report["image_sizes"]
    if sizes:
        lines.append(
            f"image sizes (w x h): min {sizes['width']['min']}x{sizes['height']['min']}, median "
            f"{sizes['width']['median']:g}x{sizes['height']['median']:g}, max {sizes['width']['max']}x"
            f"{sizes['height']['max']}; most common " + ", ".join(f"{w}x{h} ({n})" for w, h, n in sizes["most_common"])
        )
    if report["ignored_by_extension"]:
        lines.append(
            "ignored (not images): " + ", ".join(f"{ext} {n}" for ext, n in report["ignored_by_extension"].items())
        )
    _section(lines, "skipped links and special files", report.get("skipped", []))
    _section(lines, "top-level folders not read (no split name)", report.get("unused_folders", []))
    _section(lines, "splits carved without some class", list(report.get("carving", {}).values()))
    _section(lines, "unusable files", [f"[{b['split']}] {b['path']}: {b['reason']}" for b in report["bad_files"]])
    _section(lines, "identical files within a split", [" = ".join(g) for g in report["duplicates"]])
    _section(lines, "identical files in different splits (leakage)", [" = ".join(g) for g in report["leakage"]])
    verdict = "BLOCKS TRAINING: " + "; ".join(report["blocking"]) if report["blocking"] else "ready to train"
    lines.append(verdict)
    return "\n".join(lines)


def _section(lines: list[str], title: str, items: list[str]) -> None:
    if not items:
        return
    lines.append(f"{title}: {len(items)}")
    lines += [f"  {item}" for item in items[:EXAMPLES]]
    if len(items) > EXAMPLES:
        lines.append(f"  ... and {len(items) - EXAMPLES} more (see the JSON report)")


def write_report(report: dict[str, Any], path: str | Path) -> None:
    write_text_atomic(path, json.dumps(report, indent=2))
