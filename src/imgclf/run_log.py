"""Per-epoch metrics to TensorBoard and to ``metrics.jsonl``, both flushed every epoch."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from imgclf.atomic import write_text_atomic


class RunLog:
    """Writes each epoch's metrics to ``metrics.jsonl`` (fsynced) and TensorBoard.

    On resume from epoch ``start_epoch``, lines and events of later epochs (written after the
    checkpoint the run resumes from) are dropped, so curves do not zig-zag.

    Args:
        jsonl_path: the ``metrics.jsonl`` file (appended to).
        tensorboard_dir: folder of the TensorBoard event files.
        start_epoch: completed epochs of the checkpoint training resumes from (0 for a new run).
    """

    def __init__(self, jsonl_path: str | Path, tensorboard_dir: str | Path, start_epoch: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter  # slow import, only when training

        self.jsonl_path = Path(jsonl_path)
        _truncate_after(self.jsonl_path, start_epoch)
        self.writer = SummaryWriter(str(tensorboard_dir), purge_step=start_epoch + 1 if start_epoch else None)

    def write(self, epoch: int, metrics: dict[str, float]) -> None:
        record = {"epoch": epoch, **{k: _json_number(v) for k, v in metrics.items()}}
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def add_text(self, tag: str, text: str) -> None:
        self.writer.add_text(tag, text, 0)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def _truncate_after(path: Path, epoch: int) -> None:
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a crash
        if record.get("epoch", 0) <= epoch:
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The records of a ``metrics.jsonl`` file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
