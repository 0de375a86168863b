"""``summary.csv`` of a sweep folder: one row per job (or trial), rewritten whole after each change.

Jobs run in parallel (hydra/launcher=joblib) update it from several processes, so each update reads,
merges and writes under a lock file; the write itself is atomic, so a killed sweep leaves the last full table.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from filelock import FileLock

from imgclf.atomic import write_text_atomic

FIELDS = ("job", "overrides", "status", "best", "error", "dir", "note")
NAME = "summary.csv"


def update(sweep_dir: Path, rows: Iterable[dict[str, Any]], *, replace_all: bool = False) -> Path:
    """Put ``rows`` into ``sweep_dir/summary.csv`` (a row replaces the one of the same job); with
    ``replace_all`` the table becomes exactly ``rows``. Returns the path."""
    path = sweep_dir / NAME
    with _locked(sweep_dir / ".summary.lock"):
        by_job = {} if replace_all else {str(r["job"]): r for r in read(path)}
        by_job.update({str(r["job"]): r for r in rows})
        ordered = sorted(by_job.values(), key=lambda r: int(r["job"]) if str(r["job"]).isdigit() else -1)
        text = io.StringIO()
        writer = csv.DictWriter(text, FIELDS, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(ordered)
        write_text_atomic(path, text.getvalue())
    return path


def read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _locked(path: Path) -> FileLock:
    """A lock that parallel jobs (hydra/launcher=joblib) take in turn; the system releases it if its process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path, is_singleton=False, thread_local=False)


def closing_line(rows: list[dict[str, Any]], monitor: str, mode: str, path: Path) -> str:
    """One line that ends a grid sweep: how its jobs ended, the best one with its value and overrides, the table."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    ended = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    scored = [row for row in rows if row.get("best") not in ("", None)]
    if not scored:
        return f"sweep done: {len(rows)} jobs ({ended}); no job reached a {monitor}; {path}"
    best = (max if mode == "max" else min)(scored, key=lambda row: float(row["best"]))
    shared = set.intersection(*(set(row["overrides"].split()) for row in rows))
    swept = " ".join(o for o in best["overrides"].split() if o not in shared) or "no overrides"  # what made it differ
    return (
        f"sweep done: {len(rows)} jobs ({ended}); best {monitor} {float(best['best']):.4f} by job {best['job']} "
        f"({swept}) in {best['dir']}; every job: {path}"
    )
