"""Per-epoch metrics to TensorBoard and to ``metrics.jsonl``, both flushed every epoch; figures of
each new best epoch and the run's hyperparameters to TensorBoard. The trackers of the ``logger`` group (MLflow,
CSV) get each metrics.jsonl line and each new best's figures as they are written."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclf.atomic import write_text_atomic
from imgclf.reporting.outputs import Outputs


class RunLog:
    """Writes each epoch's metrics to ``metrics.jsonl`` (fsynced) and TensorBoard.

    On resume from epoch ``start_epoch``, lines and events of later epochs (written after the
    checkpoint the run resumes from) are dropped, so curves do not zig-zag.

    Args:
        jsonl_path: the ``metrics.jsonl`` file (appended to).
        tensorboard_dir: folder of the TensorBoard event files (None: no TensorBoard, ``logger`` without it).
        start_epoch: completed epochs of the checkpoint training resumes from (0 for a new run).
        trackers: :class:`imgclf.tracking.Tracker` objects, begun: each gets every line and new best's figures,
            and ``end`` when the run log closes.
    """

    def __init__(
        self,
        jsonl_path: str | Path,
        tensorboard_dir: str | Path | None,
        start_epoch: int = 0,
        figures: BestFigures | None = None,
        constants: dict[str, Any] | None = None,
        trackers: Sequence[Any] = (),
    ) -> None:
        self.jsonl_path = Path(jsonl_path)
        _truncate_after(self.jsonl_path, start_epoch)
        self.writer: Any = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # slow import, only when training

            _wait_for_a_later_second(Path(tensorboard_dir))
            self.writer = SummaryWriter(str(tensorboard_dir), purge_step=start_epoch + 1 if start_epoch else None)
        self.figures = figures
        self.constants = constants or {}  # the same in every line (e.g. world_size), not plotted
        self.trackers = list(trackers)

    def write(self, epoch: int, metrics: dict[str, float]) -> None:
        record = {"epoch": epoch, **{k: _json_number(v) for k, v in metrics.items()}, **self.constants}
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for tracker in self.trackers:  # after the line is safe on disk: a tracker never holds it up
            tracker.log_epoch(epoch, record)
        if self.writer is None:
            return
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def new_best(self, epoch: int, outputs: Outputs) -> None:
        """The confusion matrix and the most confident mistakes of a new best epoch on val."""
        if self.figures is None:
            return
        drawn = self.figures.draw(outputs)
        for tracker in self.trackers:
            tracker.log_figures(epoch, drawn)
        if self.writer is None:
            from imgclf.reporting import figures

            for fig in drawn.values():
                figures.close(fig)
            return
        for tag, fig in drawn.items():
            self.writer.add_figure(f"val/{tag}", fig, epoch)  # closes it
        self.writer.flush()

    def hparams(self, values: dict[str, Any], metrics: list[str]) -> None:
        """An HParams entry for this run: ``values`` against the scalar tags in ``metrics``.

        Written into the run's own folder (not a sub-run as ``SummaryWriter.add_hparams`` does), so
        the HParams tab lists one row per experiment or sweep job with its curves.
        """
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        clean = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in values.items()}
        for summary in hparams(clean, dict.fromkeys(metrics, 0.0)):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def add_text(self, tag: str, text: str) -> None:
        if self.writer is None:
            return
        self.writer.add_text(tag, text, 0)
        self.writer.flush()

    def close(self) -> None:
        """Called in a ``finally``: the error training stops with, if any, tells the trackers how the run ended."""
        error = sys.exc_info()[1]
        for tracker in self.trackers:
            tracker.end(error)
        if self.writer is not None:
            self.writer.close()


class BestFigures:
    """Draws the figures of a new best epoch: confusion matrix, most confident mistakes and their class
    activation maps.

    Args:
        classes: class names, in label order.
        picture: the (H, W, 3) uint8 image of validation sample i (None: no mistakes grid, e.g.
            when training on cached features).
        mistakes: how many mistakes to show.
        cams: computes class activation maps (``imgclf.reporting.cam.CamMaker`` of the model being trained);
            None: no ``cam_mistakes`` figure.
        cam_count: how many of the most confident mistakes get a map.
    """

    def __init__(
        self,
        classes: list[str],
        picture: Callable[[int], np.ndarray] | None,
        mistakes: int = 16,
        cams: Callable[[Sequence[np.ndarray], Sequence[int]], list[np.ndarray]] | None = None,
        cam_count: int = 8,
    ) -> None:
        self.classes, self.picture, self.mistakes = classes, picture, mistakes
        self.cams, self.cam_count = cams, cam_count

    def draw(self, outputs: Outputs) -> dict[str, Any]:
        from imgclf.reporting import figures

        drawn = {
            "confusion_matrix": figures.confusion_figure(outputs.confusion(len(self.classes)), self.classes, "val")
        }
        if self.picture is not None and self.mistakes:
            probs = torch.softmax(outputs.logits.double(), 1)
            drawn["misclassified"] = figures.mistakes_figure(
                probs, outputs.labels, self.classes, self.picture, self.mistakes
            )
        if self.picture is not None and self.cams is not None and self.cam_count:
            drawn.update(self.cam_figure(outputs, self.cams, self.picture))
        return drawn

    def cam_figure(
        self,
        outputs: Outputs,
        cams: Callable[[Sequence[np.ndarray], Sequence[int]], list[np.ndarray]],
        picture: Callable[[int], np.ndarray],
    ) -> dict[str, Any]:
        """``{"cam_mistakes": figure}``: the maps of the most confident mistakes ({} when the network has none)."""
        from imgclf.reporting import cam
        from imgclf.reporting.statistics import worst_mistakes

        probs = torch.softmax(outputs.logits.double(), 1)
        worst = worst_mistakes(probs, outputs.labels, self.cam_count)
        fig = cam.cam_figure(
            cams,
            worst,
            probs,
            outputs.labels,
            self.classes,
            picture,
            f"class activation maps of the {len(worst)} most confident mistakes (predicted class)",
        )
        return {} if fig is None else {"cam_mistakes": fig}


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def _wait_for_a_later_second(folder: Path) -> None:
    """TensorBoard reads a run's event files in name order, and the name starts with the second the file was
    made in, then the pid: a run resumed within the second its predecessor's file was made would sort first
    when its pid is lower, and its points would be read before the older ones (a zig-zag, and no purge).
    Waiting (under a second, and only then) for a later second keeps the files in the order they were made."""
    stamps = [
        int(part) for p in folder.glob("events.out.tfevents.*") for part in p.name.split(".")[3:4] if part.isdigit()
    ]
    while stamps and time.time() < max(stamps) + 1:
        time.sleep(0.05)


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
