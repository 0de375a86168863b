"""``logger=csv``: ``metrics.csv`` beside ``metrics.jsonl``, one row per epoch and one column per metric, as
Lightning's CSVLogger writes it (for a spreadsheet or ``pandas.read_csv``)."""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imgclf.atomic import csv_text, write_text_atomic
from imgclf.tracking.base import RunInfo, TrackingError

log = logging.getLogger(__name__)


class CsvLogger:
    """Rewrites the whole file (atomically) every epoch, so a metric that first appears in a later epoch (the
    second stage of a transfer run) gets its column and the file is never torn.

    Args:
        filename: the file's name in the experiment folder.
    """

    def __init__(self, *, filename: str = "metrics.csv") -> None:
        self.filename = filename
        self.path: Path | None = None
        self.rows: list[dict[str, Any]] = []

    def check(self) -> None:
        if not self.filename or Path(self.filename).name != self.filename:
            raise TrackingError(f"logger.csv.filename={self.filename!r}: expected a file name such as metrics.csv")

    def begin(self, run: RunInfo) -> None:
        """A resumed run keeps the rows up to the epoch it resumes from (as metrics.jsonl); a new run starts empty."""
        self.path = run.folder / self.filename
        self.rows = _read_rows(self.path, run.start_epoch) if run.resuming else []

    def open(self, run: RunInfo) -> None:
        pass  # the test report has its own metrics.json

    def log_epoch(self, epoch: int, record: Mapping[str, float | None]) -> None:
        if self.path is None:
            return
        self.rows.append({"epoch": epoch, **{k: v for k, v in record.items() if k != "epoch"}})
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        text = csv_text(columns, ([_cell(row.get(c)) for c in columns] for row in self.rows))
        try:
            write_text_atomic(self.path, text)
        except OSError as exc:
            log.warning("could not write %s (%s); metrics.jsonl holds every epoch", self.path, exc)

    def log_figures(self, epoch: int, figures: Mapping[str, Any]) -> None:
        pass

    def log_report(self, split: str, metrics: Mapping[str, float], step: int, folder: Path) -> None:
        pass

    def log_model(self, name: str, files: list[Path]) -> None:
        pass

    def end(self, error: BaseException | None = None) -> None:
        pass


def _cell(value: Any) -> Any:
    return "" if value is None else value  # NaN/inf: metrics.jsonl's null, an empty cell here


def _read_rows(path: Path, up_to_epoch: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = []
    for row in rows:
        try:
            if int(row.get("epoch") or 0) <= up_to_epoch:
                kept.append({k: v for k, v in row.items() if v not in ("", None)})
        except ValueError:
            continue  # not a row this logger wrote
    return kept
