"""A TensorBoard event file written at once, whole or not at all (the test report's entries).

torch's ``SummaryWriter`` writes from a background thread: a full disk there prints that thread's raw
``EFBIG``/``ENOSPC`` traceback, reaches the caller only on a later call (or, at ``close()``, not at all) and
leaves a torn file. A report's entries are all known at once, so they are encoded in memory with torch's
own summary functions and tensorboard's record format, then written with :func:`write_atomic`: a failed
write raises an ``OSError`` here, in the caller's thread, and leaves no file.
"""

from __future__ import annotations

import io
import itertools
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard.summary import image, pr_curve, scalar

from imgclf.atomic import write_atomic

_FILES = itertools.count()


class EventFile:
    """Events added in memory, saved as one new ``events.out.tfevents.*`` file of a run folder."""

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        self._records = RecordWriter(self._buffer)
        self._add(event_pb2.Event(file_version="brain.Event:2"), None)

    def _add(self, event: event_pb2.Event, step: int | None) -> None:
        event.wall_time = time.time()
        if step is not None:
            event.step = int(step)
        self._records.write(event.SerializeToString())

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._add(event_pb2.Event(summary=scalar(tag, float(value))), step)

    def add_pr_curve(self, tag: str, labels: torch.Tensor, predictions: torch.Tensor, step: int) -> None:
        self._add(event_pb2.Event(summary=pr_curve(tag, labels.cpu().numpy(), predictions.cpu().numpy(), 127)), step)

    def add_figure(self, tag: str, fig: Any, step: int) -> None:
        """A matplotlib figure as an image (the figure stays open)."""
        from torch.utils.tensorboard._utils import figure_to_image

        self._add(event_pb2.Event(summary=image(tag, figure_to_image(fig, close=False), dataformats="CHW")), step)

    def save(self, folder: str | Path) -> Path:
        """Write the events as a new file in ``folder``, named as ``SummaryWriter`` names its files.

        Raises:
            OSError: the file could not be written (nothing is left of it).
        """
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_FILES)}"
        path = Path(folder) / name
        data = self._buffer.getvalue()
        write_atomic(path, lambda f: f.write(data))
        return path
