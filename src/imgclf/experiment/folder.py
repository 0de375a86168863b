"""The experiment directory: its files, its lock, and which checkpoint a run continues from."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from omegaconf import OmegaConf

from imgclf.atomic import write_text_atomic
from imgclf.data.splits_file import checksum_path
from imgclf.errors import CheckpointError, ExperimentError, ImgclfError
from imgclf.experiment.checkpoint import load_checkpoint, remove_orphan_temps

log = logging.getLogger(__name__)


HYDRA_RECORDS = frozenset({".hydra"})  # with *.log: what Hydra writes into a run folder before the run does


def _remove_empty_parents(folder: Path, top: Path) -> None:
    """Remove ``folder`` and its parents while they are empty, up to and including ``top``."""
    folder, top = folder.absolute(), top.absolute()
    while folder == top or top in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _inside(path: Path, top: Path) -> bool:
    """Whether ``path`` is a folder strictly inside ``top``, both with their links resolved."""
    path, top = path.resolve(), top.resolve()
    return top in path.parents


class ExperimentDir:
    """``experiments/<experiment>/`` and its TensorBoard folder ``runs/<experiment>/``.

    Args:
        experiments, runs: ``paths.experiments`` and ``paths.runs``, the folders these two must lie inside for
            :meth:`clear` to delete anything (default: the folders that hold them).
    """

    def __init__(
        self,
        path: str | Path,
        tensorboard_dir: str | Path,
        *,
        experiments: str | Path | None = None,
        runs: str | Path | None = None,
    ) -> None:
        self.path = Path(path)
        self.tensorboard_dir = Path(tensorboard_dir)
        self.experiments = Path(experiments) if experiments is not None else self.path.parent
        self.runs = Path(runs) if runs is not None else self.tensorboard_dir.parent
        self.best = self.path / "best.pt"
        self.last = self.path / "last.pt"
        self.metrics = self.path / "metrics.jsonl"
        self.splits = self.path / "splits.csv"
        self.config = self.path / "config.yaml"
        self.lock_file = self.path / ".lock"
        self.config_history = self.path / "config_history"

    def results(self) -> list[Path]:
        """Files a training run leaves behind (what overwriting would delete)."""
        files = (self.best, self.last, self.metrics, self.splits, checksum_path(self.splits), self.config)
        return [p for p in files if p.exists()] + sorted(self.config_history.glob("*.yaml"))

    def clear(self) -> None:
        """Delete the results of a previous run (an explicit user choice: overwrite=true), if there are any.
        Call it last: after the new run's config and data have been checked (docs/reliability.md G5). Deletes nothing
        outside this experiment's two folders (docs/reliability.md J1): see :meth:`check_confined`."""
        if not self.has_results():
            return
        self.check_confined()
        reports = self._reports()
        for path in self.results():
            path.unlink()  # a link is removed, not what it points to
        _remove_empty_parents(self.config_history, self.config_history)
        for report in reports:  # test/, test_val/, test_<other data>/ ...
            if report.is_symlink():
                report.unlink()
            else:
                shutil.rmtree(report, ignore_errors=True)
        if self.tensorboard_dir.is_symlink():
            self.tensorboard_dir.unlink()
        else:
            shutil.rmtree(self.tensorboard_dir, ignore_errors=True)
        log.warning("overwrite=true: deleted the previous results in %s and %s", self.path, self.tensorboard_dir)

    def _reports(self) -> list[Path]:
        return [p for p in self.path.glob("test*") if p.is_dir()]

    def has_results(self) -> bool:
        """Whether :meth:`clear` has anything to delete."""
        return bool(self.results() or self._reports()) or self.tensorboard_dir.exists()

    def check_confined(self) -> None:
        """Refuse (:class:`ExperimentError`) to delete this experiment's results unless its folder is inside
        ``paths.experiments`` and its TensorBoard folder inside ``paths.runs``, links resolved, neither holding the
        other: an experiment folder that is a link to elsewhere, or a name like ``..``, never gets a folder
        outside its own deleted."""
        folders = [(self.path, self.experiments, "paths.experiments"), (self.tensorboard_dir, self.runs, "paths.runs")]
        if self.config_history.exists():
            folders.append((self.config_history, self.path, "the experiment folder"))
        for folder, top, name in folders:
            if not _inside(folder, top):
                raise ExperimentError(
                    f"overwrite=true would delete results in {folder}, which is {folder.resolve()} once its links are "
                    f"resolved: not a folder inside {name} ({top.resolve()}). Nothing was deleted; remove or move "
                    f"{folder} yourself, or choose experiment=<new name>"
                )
        if self.path.resolve() == self.tensorboard_dir.resolve() or _inside(self.path, self.tensorboard_dir):
            raise ExperimentError(
                f"overwrite=true would delete the TensorBoard folder {self.tensorboard_dir}, which "
                f"holds the experiment folder {self.path}: set paths.runs and paths.experiments "
                "to two separate folders"
            )

    def record_config(self, config: dict[str, Any], epoch: int, step: int, saved: dict[str, Any] | None) -> Path:
        """Keep the config a run starts with as ``config_history/epoch-<E>-step-<S>.yaml`` (``config.yaml`` is
        always the latest): a resumed run with changed settings leaves the record of what ran before it.
        ``saved``: the config of the checkpoint resumed from, recorded first when the history lacks it."""
        if saved is not None and not any(self.config_history.glob("*.yaml")):
            self._write_config(self.config_history / "epoch-0-step-0.yaml", saved)  # written before the history
        path = self.config_history / f"epoch-{epoch}-step-{step}.yaml"
        self._write_config(path, config)
        return path

    @staticmethod
    def _write_config(path: Path, config: dict[str, Any]) -> None:
        write_text_atomic(path, OmegaConf.to_yaml(OmegaConf.create(config)))

    @contextmanager
    def discarded_unless_used(self, experiments: Path) -> Iterator[None]:
        """Remove the folder again when the block fails and the folder holds nothing but what Hydra wrote
        at start-up (its ``.hydra`` record and log), and then its empty parents up to ``experiments``: a run
        stopped by bad input creates nothing."""
        try:
            yield
        except ImgclfError:
            if self.path.is_dir() and all(p.name in HYDRA_RECORDS or p.suffix == ".log" for p in self.path.iterdir()):
                shutil.rmtree(self.path, ignore_errors=True)
                _remove_empty_parents(self.path.parent, experiments)
            raise

    def lock(self, hint: str = "wait for it to finish or choose another experiment=<name>") -> ExperimentLock:
        """The experiment's lock; ``hint``: what to do when another process holds it."""
        return ExperimentLock(self.lock_file, hint)

    def resume_payload(self, resume: str, *, overwrite: bool) -> dict[str, Any] | None:
        """The checkpoint to resume from, or None to start fresh. Never destroys results silently.

        Args:
            resume: ``auto`` (continue from ``last.pt`` if there is one), ``never``, or a path.
            overwrite: delete this experiment's previous results instead of refusing.
        """
        for folder in (self.path, self.config_history):  # every start, under the lock: what a killed run left
            remove_orphan_temps(folder)
        if resume not in ("auto", "never"):
            payload = load_checkpoint(resume)
            if self.results() and Path(resume).resolve().parent != self.path.resolve() and not overwrite:
                raise ExperimentError(
                    f"{self.path} already holds results; resuming {resume} there would "
                    "replace them: choose experiment=<new name> or overwrite=true"
                )
            return payload
        if overwrite:  # deleted by the caller, with clear(), once the new run's config and data are checked
            if self.has_results():
                self.check_confined()  # but refused now, before any data is read, if it would reach outside
            return None
        payload = self.latest_checkpoint() if resume == "auto" else None
        if payload is None and resume == "never" and self.results():
            raise ExperimentError(
                f"{self.path} already holds results {[p.name for p in self.results()]}; "
                "use resume=auto to continue it, overwrite=true to delete and start over, "
                "or experiment=<new name>"
            )
        return payload

    def latest_checkpoint(self) -> dict[str, Any] | None:
        """``last.pt``, or ``best.pt`` when ``last.pt`` cannot be read (saying so); None if neither exists."""
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
    """An exclusive lock on the experiment folder (``.lock``, which holds the pid for messages), so two runs never
    write the same experiment at once. filelock takes it (flock on Linux and macOS, a byte-range lock on Windows):
    the system releases it when its process dies, so a crashed run leaves no stale lock, and no other run can take
    it in the moment its pid is being written (the pid is written through the locked descriptor)."""

    def __init__(self, path: Path, hint: str = "wait for it to finish or choose another experiment=<name>") -> None:
        self.path = path
        self.hint = hint
        self._lock = FileLock(path, timeout=0, is_singleton=False, thread_local=False, on_acquired=_write_pid)

    def __enter__(self) -> ExperimentLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(blocking=False)
        except Timeout:
            pid = read_pid(self.path)
            raise ExperimentError(
                f"{self.path.parent} is in use by process {pid if pid is not None else '(unknown)'} (lock file "
                f"{self.path}); {self.hint}"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        # unlinked while still held, so a finished experiment keeps no lock file; a run that opened the old file
        # meanwhile finds it unlinked once it locks it and takes the new one (filelock checks the link count)
        self.path.unlink(missing_ok=True)
        self._lock.release()


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, str(os.getpid()).encode())


def read_pid(path: Path) -> int | None:
    """The process id written in a lock file, or None when it cannot be read."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
