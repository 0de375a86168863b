"""The experiment directory: its files, its lock, its checkpoints and what resuming may do."""

from __future__ import annotations

import logging
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgclf.experiment.checkpoint import load_checkpoint, remove_orphan_temps, rng_states, save_atomic
from imgclf.training.engine import Diverged, TrainState
from imgclf.errors import CheckpointError, ExperimentError
from imgclf.training.scheduler import LRSchedule

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class ExperimentDir:
    """``experiments/<experiment>/`` and its TensorBoard folder ``runs/<experiment>/``."""

    def __init__(self, path: str | Path, tensorboard_dir: str | Path) -> None:
        self.path = Path(path)
        self.tensorboard_dir = Path(tensorboard_dir)
        self.best = self.path / "best.pt"
        self.last = self.path / "last.pt"
        self.metrics = self.path / "metrics.jsonl"
        self.splits = self.path / "splits.csv"
        self.config = self.path / "config.yaml"
        self.lock_file = self.path / ".lock"

    def results(self) -> list[Path]:
        """Files a training run leaves behind (what overwriting would delete)."""
        return [p for p in (self.best, self.last, self.metrics, self.splits, self.config) if p.exists()]

    def clear(self) -> None:
        """Delete the results of a previous run (an explicit user choice: overwrite=true)."""
        for path in self.results():
            path.unlink()
        for report in self.path.glob("test*"):  # test/, test_val/, test_<other data>/ ...
            if report.is_dir():
                shutil.rmtree(report, ignore_errors=True)
        shutil.rmtree(self.tensorboard_dir, ignore_errors=True)
        log.warning("overwrite=true: deleted the previous results in %s and %s", self.path, self.tensorboard_dir)

    def lock(self) -> ExperimentLock:
        return ExperimentLock(self.lock_file)

    def resume_payload(self, resume: str, *, overwrite: bool) -> dict[str, Any] | None:
        """The checkpoint to resume from, or None to start fresh. Never destroys results silently.

        Args:
            resume: ``auto`` (continue from ``last.pt`` if there is one), ``never``, or a path.
            overwrite: delete this experiment's previous results instead of refusing.
        """
        if resume not in ("auto", "never"):
            payload = load_checkpoint(resume)
            if self.results() and Path(resume).resolve().parent != self.path.resolve() and not overwrite:
                raise ExperimentError(f"{self.path} already holds results; resuming {resume} there would "
                                      "replace them: choose experiment=<new name> or overwrite=true")
            return payload
        if overwrite:
            if self.results():
                self.clear()
            return None
        payload = self.latest_checkpoint() if resume == "auto" else None
        if payload is None and resume == "never" and self.results():
            raise ExperimentError(f"{self.path} already holds results {[p.name for p in self.results()]}; "
                                  "use resume=auto to continue it, overwrite=true to delete and start over, "
                                  "or experiment=<new name>")
        return payload

    def latest_checkpoint(self) -> dict[str, Any] | None:
        """``last.pt``, or ``best.pt`` when ``last.pt`` cannot be read (saying so); None if neither exists."""
        remove_orphan_temps(self.path)
        errors = []
        for path in (self.last, self.best):
            if not path.exists():
                continue
            try:
                payload = load_checkpoint(path)
            except CheckpointError as exc:
                errors.append(str(exc))
                continue
            if errors:
                log.warning("%s; resuming from %s instead", errors[0], path)
            return payload
        if errors:
            raise CheckpointError("no loadable checkpoint to resume from: " + "; ".join(errors))
        return None


class ExperimentLock:
    """A lock file holding the pid, so two runs never write the same experiment at once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> ExperimentLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = read_pid(self.path)
                if pid is not None and pid != os.getpid() and pid_alive(pid):
                    raise ExperimentError(
                        f"{self.path.parent} is in use by process {pid} (lock file {self.path}); "
                        "wait for it to finish or choose another experiment=<name>"
                    ) from None
                self.path.unlink(missing_ok=True)  # left by a run that died
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise ExperimentError(f"could not take the lock {self.path}")

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


def read_pid(path: Path) -> int | None:
    """The process id written in a lock file, or None when it cannot be read."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CheckpointWriter:
    """Builds self-describing checkpoints and writes ``best.pt`` / ``last.pt`` atomically.

    Args:
        exp: the experiment directory.
        model: the trained model (a :class:`~imgclf.models.classifier.Classifier`).
        optimizer: its optimizer.
        schedule: its learning-rate schedule.
        meta: plain values stored in every checkpoint (class names, input size, config, ...).
    """

    def __init__(self, exp: ExperimentDir, model: nn.Module, optimizer: torch.optim.Optimizer,
                 schedule: LRSchedule, meta: dict[str, Any], scaler: torch.amp.GradScaler | None = None,
                 ema: torch.optim.swa_utils.AveragedModel | None = None) -> None:
        self.exp, self.model, self.optimizer, self.schedule = exp, model, optimizer, schedule
        self.scaler, self.ema = scaler, ema
        self.meta = {**meta, "format": FORMAT_VERSION, "versions": versions()}

    def payload(self, state: TrainState) -> dict[str, Any]:
        return {
            **self.meta,
            # with EMA, "model" holds the averaged weights (what test and predict use) and
            # "train_model" the weights training continues from
            "model": (self.ema.module if self.ema is not None else self.model).state_dict(),
            "train_model": self.model.state_dict() if self.ema is not None else {},
            "ema_steps": int(self.ema.n_averaged) if self.ema is not None else 0,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "state": state.as_dict(),
            "rng": rng_states(),
        }

    def save(self, state: TrainState, *, best: bool) -> None:
        """Write ``last.pt`` (and ``best.pt`` first when ``best``); non-finite weights are never written.

        Raises:
            Diverged: a weight is NaN or infinite; the files on disk keep the previous state.
        """
        for name, tensor in self.model.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise Diverged(f"weight '{name}' became NaN or infinite after epoch {state.epoch} "
                               f"(batch {state.step}); it was not saved")
        payload = self.payload(state)
        if best:  # the new best is durable before last.pt moves on
            save_atomic(payload, self.exp.best)
        save_atomic(payload, self.exp.last)


def versions() -> dict[str, str]:
    import torchvision

    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__)}


def is_finished(payload: dict[str, Any], epochs: int) -> bool:
    state = payload["state"]
    return state.get("stopped_early", False) or (state["epoch"] >= epochs and not state["step"])


STRUCTURAL_KEYS = ("model", "dataset.image_size", "dataset.root", "dataset.mean", "dataset.std")
WARNED_KEYS = ("epochs", "optimizer", "scheduler", "loss", "loader.batch_size", "seed")


def compare_configs(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Differences that forbid resuming, and differences that only deserve a warning."""
    def get(cfg: dict[str, Any], dotted: str) -> Any:
        for part in dotted.split("."):
            cfg = cfg.get(part) if isinstance(cfg, dict) else None
        return cfg

    def diff(keys: tuple[str, ...]) -> list[str]:
        return [f"{k}: {get(saved, k)!r} -> {get(current, k)!r}" for k in keys if get(saved, k) != get(current, k)]

    return diff(STRUCTURAL_KEYS), diff(WARNED_KEYS)


def check_resumable(payload: dict[str, Any], config: dict[str, Any], classes: list[str]) -> None:
    """Refuse to resume when the model, data or classes changed; warn about other changes.

    Args:
        payload: the checkpoint to resume from.
        config: the current resolved config, as plain data.
        classes: the class list found in the data now.
    """
    refused, warned = compare_configs(payload["config"], config)
    if list(payload["class_names"]) != classes:
        refused.append(f"classes: {payload['class_names']} -> {classes}")
    if refused:
        raise ExperimentError("cannot resume: these settings differ from the checkpoint's:\n  "
                              + "\n  ".join(refused) + "\nuse experiment=<new name> or overwrite=true")
    for change in warned:
        log.warning("resuming with a changed setting: %s", change)
