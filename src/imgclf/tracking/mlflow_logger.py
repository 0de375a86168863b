"""``logger=mlflow``: a run's record in MLflow through MLflow's own client (``MlflowClient``: no global active
run, so the jobs of an in-process sweep never mix): the resolved config as params, every metrics.jsonl line as
metrics (the same names, step = epoch), the figures of each new best and the test report as artifacts, best.pt as
a logged model, a sweep's jobs as runs nested under one parent run.

The run id is kept in the experiment folder (``mlflow_run.json``), so a resumed training continues its run;
a sweep's parent run id in the sweep folder (``mlflow_sweep.json``). Only :meth:`check`, :meth:`begin` and
:meth:`open` raise, before any training: later failures (a server that went away) are warned about and the
metrics held back are sent once it answers again, so the checkpoints and metrics.jsonl never wait on it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imgclf.atomic import write_text_atomic
from imgclf.tracking.base import RunInfo, TrackingError

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"  # in the experiment folder: the run a resumed training continues
SWEEP_FILE = "mlflow_sweep.json"  # in the sweep folder: the parent run of the sweep's jobs
PARAMS_PER_CALL, METRICS_PER_CALL = 100, 1000  # log_batch's limits
PARENT_TAG = "mlflow.parentRunId"  # mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID


class MlflowLogger:
    """Args:
    tracking_uri: the store (``http://host:5000``, ``sqlite:///path.db``, ``file:///folder``, ``databricks``);
        None: the local SQLite store ``<local_dir>/mlflow.db``, MLflow 3's default kind of store.
    local_dir: the folder of the local store and its artifacts (``<local_dir>/mlartifacts``) when
        ``tracking_uri`` is None.
    experiment_name: the MLflow experiment (created when missing).
    run_name: the run's name (None: the one imgclf gives, the experiment or a sweep job's overrides).
    log_model: log best.pt (with the files it needs) as the run's logged model when training ends.
    tags: extra tags of every run.
    artifact_location: where a new MLflow experiment keeps its files (None: the local store's folder, or the
        server's default).
    timeout: seconds one request to a server may take.
    retries: retries of a failed request while training (the check at start-up tries once).
    """

    def __init__(
        self,
        *,
        tracking_uri: str | None = None,
        local_dir: str = "runs",
        experiment_name: str = "imgclf",
        run_name: str | None = None,
        log_model: bool = True,
        tags: Mapping[str, Any] | None = None,
        artifact_location: str | None = None,
        timeout: int = 10,
        retries: int = 2,
    ) -> None:
        if int(timeout) < 1 or int(retries) < 0:
            raise ValueError(
                f"timeout={timeout!r} and retries={retries!r}: expected a timeout of at least 1 s, retries >= 0"
            )
        root = Path(local_dir).expanduser().resolve()
        self.local_root = None if tracking_uri else root
        self.tracking_uri = str(tracking_uri) if tracking_uri else f"sqlite:///{root / 'mlflow.db'}"
        self.artifact_location = artifact_location or ((root / "mlartifacts").as_uri() if not tracking_uri else None)
        self.experiment_name, self.run_name, self.log_model_files = experiment_name, run_name, log_model
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.timeout, self.retries = int(timeout), int(retries)
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self._owns_status = False  # test.py reports into a finished run: it leaves its status alone
        self._pending: list[Any] = []  # metrics not yet accepted by the store
        self._failing = False
        self._client: Any = None

    # -- before training: these raise ------------------------------------------------------------------------

    def check(self) -> None:
        """The store answers and holds the experiment (created when missing); one try, ``timeout`` seconds."""
        if self.experiment_id is not None:
            return
        try:
            if self.local_root is not None:
                self.local_root.mkdir(parents=True, exist_ok=True)
            with self._bounded(retries=0):
                self.experiment_id = self._experiment()
        except TrackingError:
            raise
        except Exception as exc:
            raise TrackingError(self._unusable(exc)) from None

    def begin(self, run: RunInfo) -> None:
        """A new run (nested under the sweep's parent run for a sweep job), or the stored one when resuming."""
        self._start(run, run.folder / RUN_FILE, reuse=run.resuming, parent=_parent_of(run, self.tracking_uri))

    def open(self, run: RunInfo) -> None:
        """The experiment's recorded run (its status left as it is), or a new one when there is none."""
        self._start(run, run.folder / RUN_FILE, reuse=True, parent=None, reopen=False)

    def begin_sweep(self, sweep_dir: Path, name: str, params: Mapping[str, str]) -> None:
        """The parent run of a sweep's jobs; a sweep continued in the same folder (an Optuna study) continues it."""
        self._start(
            RunInfo(folder=sweep_dir, name=name, params=params), sweep_dir / SWEEP_FILE, reuse=True, parent=None
        )

    def _start(self, run: RunInfo, record: Path, *, reuse: bool, parent: str | None, reopen: bool = True) -> None:
        self.check()
        try:
            with self._bounded(self.retries):
                stored = self._stored_run(record) if reuse else None
                if stored is None:
                    self.run_id = self._create_run(run, parent)
                    self._owns_status = True
                    write_text_atomic(record, json.dumps(self._record(), indent=2) + "\n")
                else:
                    self.run_id, self._owns_status = stored.info.run_id, reopen
                    if reopen:
                        self.client.update_run(self.run_id, status="RUNNING")
                self._log_params(run.params, {} if stored is None else stored.data.params)
        except TrackingError:
            raise
        except Exception as exc:
            raise TrackingError(self._unusable(exc)) from None
        log.info("MLflow run %s (experiment %r) in %s", self.run_id, self.experiment_name, self.tracking_uri)

    # -- while training: these warn and go on ----------------------------------------------------------------

    def log_epoch(self, epoch: int, record: Mapping[str, float | None]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self._pending += [
            Metric(key, math.nan if value is None else float(value), stamp, epoch)
            for key, value in record.items()
            if key != "epoch" and (value is None or isinstance(value, (int, float)))
        ]
        self._flush()

    def log_figures(self, epoch: int, figures: Mapping[str, Any]) -> None:
        """Each new best's figures replace the previous best's, under ``val_best/`` (the epoch is a tag)."""
        if self.run_id is None:
            return
        with self._attempt("the best epoch's figures"):
            for tag, fig in figures.items():
                self.client.log_figure(self.run_id, fig, f"val_best/{tag}.png")
            self.client.set_tag(self.run_id, "imgclf.best_epoch", str(epoch))

    def log_report(self, split: str, metrics: Mapping[str, float], step: int, folder: Path) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self._pending += [Metric(f"{split}/{key}", float(v), stamp, step) for key, v in metrics.items()]
        self._flush()
        with self._attempt(f"the report {folder}"):
            self.client.log_artifacts(self.run_id, str(folder), artifact_path=folder.name)

    def log_model(self, name: str, files: list[Path]) -> None:
        """``files`` (best.pt, config.yaml) as a logged model of the run: MLflow 3's Models tab lists it."""
        if not self.log_model_files or self.run_id is None:
            return
        from mlflow.entities import LoggedModelOutput

        with self._attempt("the model"), tempfile.TemporaryDirectory() as tmp:
            for path in files:
                if path.is_file():
                    shutil.copy2(path, Path(tmp) / path.name)
            model = self.client.create_logged_model(
                self.experiment_id, name=name, source_run_id=self.run_id, model_type="imgclf"
            )
            self.client.log_model_artifacts(model.model_id, tmp)
            self.client.finalize_logged_model(model.model_id, "READY")
            self.client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, 0)])
            log.info("MLflow logged model %s (%s)", model.model_id, ", ".join(p.name for p in files if p.is_file()))

    def end(self, error: BaseException | None = None) -> None:
        """FINISHED, KILLED (interrupted: resumable) or FAILED; metrics still held back are tried once more."""
        if self.run_id is None:
            return
        self._flush()
        if self._pending:
            log.warning(
                "MLflow (%s) never received %d metric values of run %s; metrics.jsonl holds them",
                self.tracking_uri,
                len(self._pending),
                self.run_id,
            )
        if self._owns_status:
            with self._attempt("the run's end"):
                self.client.set_terminated(self.run_id, _status(error))

    def end_sweep(self, error: BaseException | None = None, files: tuple[Path, ...] = ()) -> None:
        """The sweep's own files (summary.csv, best.yaml) on the parent run, which then ends."""
        if self.run_id is None:
            return
        with self._attempt("the sweep's files"):
            for path in files:
                if path.is_file():
                    self.client.log_artifact(self.run_id, str(path))
        self.end(error)

    # -- helpers -----------------------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient  # slow import: only when this logger is chosen

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment_name)
        if found is None:
            try:
                return str(self.client.create_experiment(self.experiment_name, self.artifact_location))
            except MlflowException:  # a parallel sweep job created it first
                found = self.client.get_experiment_by_name(self.experiment_name)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            raise TrackingError(
                f"MLflow experiment {self.experiment_name!r} in {self.tracking_uri} is deleted: restore it "
                f"(mlflow experiments restore --experiment-id {found.experiment_id}) or choose another name, "
                "logger.mlflow.experiment_name=<name>"
            )
        return str(found.experiment_id)

    def _create_run(self, run: RunInfo, parent: str | None) -> str:
        tags = {**self.tags, "imgclf.folder": str(run.folder)}
        if parent:
            tags[PARENT_TAG] = parent
        created = self.client.create_run(self.experiment_id, run_name=self.run_name or run.name, tags=tags)
        return str(created.info.run_id)

    def _stored_run(self, record: Path) -> Any:
        """The run ``record`` names, when it is of this store and experiment and not deleted; else None."""
        stored = _read_record(record)
        if stored.get("tracking_uri") != self.tracking_uri or stored.get("experiment_id") != self.experiment_id:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(str(stored.get("run_id")))
        except MlflowException:
            log.warning("MLflow run %s named in %s is gone: starting a new run", stored.get("run_id"), record)
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def _record(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "experiment_id": self.experiment_id, "run_id": self.run_id}

    def _log_params(self, params: Mapping[str, str], logged: Mapping[str, str]) -> None:
        """New keys only: MLflow refuses to change a logged param, and a resumed run may change a few
        (config_history/ in the experiment folder keeps each start's config)."""
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        values = {k: str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in params.items()}
        changed = sorted(k for k, v in values.items() if k in logged and logged[k] != v)
        if changed:
            log.info("MLflow keeps the first value of %s (changed since the run began)", ", ".join(changed))
        new = [Param(k, v) for k, v in values.items() if k not in logged]
        for i in range(0, len(new), PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=new[i : i + PARAMS_PER_CALL])

    def _flush(self) -> None:
        if self.run_id is None or not self._pending:
            return
        with self._attempt("metrics"):
            while self._pending:
                self.client.log_batch(self.run_id, metrics=self._pending[:METRICS_PER_CALL])
                del self._pending[:METRICS_PER_CALL]

    @contextmanager
    def _attempt(self, what: str) -> Iterator[None]:
        """A failure is a warning (once until the store answers again): training goes on without it."""
        try:
            with self._bounded(self.retries):
                yield
        except Exception as exc:
            if not self._failing:
                log.warning(
                    "MLflow (%s) did not record %s: %s. Training goes on: the checkpoints and metrics.jsonl hold "
                    "everything, and held-back metrics are sent when it answers again",
                    self.tracking_uri,
                    what,
                    _short(exc),
                )
            self._failing = True
            return
        if self._failing:
            log.info("MLflow (%s) answers again", self.tracking_uri)
        self._failing = False

    @contextmanager
    def _bounded(self, retries: int) -> Iterator[None]:
        """MLflow's HTTP client reads its retries and timeout from the environment at each request; by default
        it retries for minutes. Bounded here, for this logger's requests only, and restored after."""
        wanted = {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.timeout),
        }
        before = {key: os.environ.get(key) for key in wanted}
        os.environ.update(wanted)
        try:
            yield
        finally:
            for key, value in before.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def _unusable(self, exc: BaseException) -> str:
        remote = self.tracking_uri.startswith(("http://", "https://"))
        todo = (
            "start it (mlflow server --host 127.0.0.1 --port 5000) or point logger.mlflow.tracking_uri at one "
            "that answers"
            if remote
            else "check that the path can be written, or set logger.mlflow.tracking_uri"
        )
        return (
            f"MLflow tracking store {self.tracking_uri} cannot be used ({_short(exc)}): {todo}; or train "
            "without MLflow: logger=tensorboard"
        )


def _parent_of(run: RunInfo, tracking_uri: str) -> str | None:
    """The parent run a sweep job is nested under: the sweep's, when it is in the same store."""
    if run.sweep_dir is None:
        return None
    stored = _read_record(run.sweep_dir / SWEEP_FILE)
    return stored.get("run_id") if stored.get("tracking_uri") == tracking_uri else None


def _read_record(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def _status(error: BaseException | None) -> str:
    from imgclf.training.state import Interrupted

    if error is None:
        return "FINISHED"
    return "KILLED" if isinstance(error, (Interrupted, KeyboardInterrupt, SystemExit)) else "FAILED"


def _short(exc: BaseException) -> str:
    """The first line of an error, without the pages of urllib3 retries MLflow's messages carry."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."
