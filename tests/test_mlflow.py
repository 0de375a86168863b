"""The ``logger`` group against the real MLflow: a local SQLite store and an ``mlflow server`` started on
127.0.0.1 by this module, every run read back through ``MlflowClient`` and compared with metrics.jsonl."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import imgclf.tasks as tasks
from helpers import ROOT, StopAfter, compose_cfg, make_folder, read_csv, run_cli, tiny_overrides
from imgclf.errors import ConfigError
from imgclf.experiment.run_log import read_metrics
from imgclf.tasks.loggers import build, flat_params
from imgclf.tracking import CsvLogger, MlflowLogger, RunInfo, TrackingError
from imgclf.training.state import Interrupted

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

SERVER_START_S = 240  # a loaded 2-core machine takes about a minute


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real tracking server (SQLite backend, proxied artifacts), killed at the end."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", f"sqlite:///{root / 'db'}", "--artifacts-destination", str(root / "art")]
    with open(root / "server.log", "w") as out:
        proc = subprocess.Popen([*cmd, "--workers", "1"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=2).read() == b"OK":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        try:  # the server's job consumers outlive it on SIGTERM: none is left behind
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def jsonl_matches_history(client: MlflowClient, run_id: str, metrics_jsonl: Path) -> None:
    """Every value of every metrics.jsonl line is the run's metric of that name at step = epoch, and nothing else."""
    lines = read_metrics(metrics_jsonl)
    keys = {k for line in lines for k in line if k != "epoch"}
    assert keys <= set(client.get_run(run_id).data.metrics)
    for key in keys:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        expected = sorted((line["epoch"], line[key]) for line in lines if key in line)
        assert [s for s, _ in history] == [s for s, _ in expected], key
        for (_, got), (_, want) in zip(history, expected, strict=True):
            assert (math.isnan(got) and want is None) or got == want, (key, got, want)


def only_run(client: MlflowClient, experiment: str) -> object:
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run


# -- fast: the config group and the pieces ---------------------------------------------------------------------


def test_logger_group_defaults_to_tensorboard_and_takes_several(tmp_path: Path) -> None:
    default = build(compose_cfg("train", ["experiment=x", f"paths.runs={tmp_path}"]))
    assert default.tensorboard and default.trackers == []
    several = build(compose_cfg("train", ["experiment=x", "logger=[tensorboard,mlflow,csv]", f"paths.runs={tmp_path}"]))
    assert several.tensorboard
    assert [type(t) for t in several.trackers] == [MlflowLogger, CsvLogger]
    (mlflow,) = build(compose_cfg("train", ["experiment=x", "logger=mlflow", f"paths.runs={tmp_path}"])).trackers
    assert mlflow.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"  # the local store under paths.runs
    none = build(compose_cfg("train", ["logger=[]"]))
    assert not none.tensorboard and none.trackers == []
    with pytest.raises(ConfigError, match=r"logger\.mlflow: .*retries=-1"):
        build(compose_cfg("train", ["experiment=x", "logger=mlflow", "logger.mlflow.retries=-1"]))


def test_params_are_the_flattened_config() -> None:
    flat = flat_params({"optimizer": {"lr": 0.01, "betas": [0.9, 0.99]}, "dataset": {"exclude": ["a.jpg"]}, "seed": 1})
    assert flat == {
        "optimizer.lr": "0.01",
        "optimizer.betas": "[0.9, 0.99]",
        "dataset.exclude": '["a.jpg"]',
        "seed": "1",
    }


def test_csv_logger_writes_a_column_per_metric_and_keeps_resumed_rows(tmp_path: Path) -> None:
    first = CsvLogger()
    first.begin(RunInfo(folder=tmp_path, name="x"))
    first.log_epoch(1, {"epoch": 1, "train/loss": 0.5, "val/acc": None})
    first.log_epoch(2, {"epoch": 2, "train/loss": 0.4, "val/acc": 0.75, "later": 3.0})  # a new column appears
    rows = read_csv(tmp_path / "metrics.csv")
    assert list(rows[0]) == ["epoch", "train/loss", "val/acc", "later"]
    assert [r["val/acc"] for r in rows] == ["", "0.75"] and rows[0]["later"] == ""
    resumed = CsvLogger()  # resuming from epoch 1: epoch 2's row (written after that checkpoint) goes
    resumed.begin(RunInfo(folder=tmp_path, name="x", resuming=True, start_epoch=1))
    resumed.log_epoch(2, {"epoch": 2, "train/loss": 0.3})
    assert [(r["epoch"], r["train/loss"]) for r in read_csv(tmp_path / "metrics.csv")] == [("1", "0.5"), ("2", "0.3")]


def test_unreachable_server_fails_fast_before_any_image_is_read(tmp_path: Path, tiny_folder: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = compose_cfg(
        "train",
        tiny_overrides(tmp_path, tiny_folder, "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={uri}"),
    )
    started = time.monotonic()
    with pytest.raises(TrackingError) as error:
        tasks.train(cfg)
    assert time.monotonic() - started < 30  # one try, no minutes of retries
    message = str(error.value)
    assert uri in message and "mlflow server" in message and "logger=tensorboard" in message
    assert not (tmp_path / "experiments" / "tiny").exists()  # nothing trained, nothing left
    assert not (tmp_path / "cache").exists()  # no image was decoded


# -- the local store (the default): one trained run, read back -------------------------------------------------


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """train.py then test.py with logger=[tensorboard,mlflow,csv] and the default store."""
    tmp = tmp_path_factory.mktemp("local_run")
    root = make_folder(tmp / "data", {"train": 6, "val": 3, "test": 3})
    overrides = tiny_overrides(tmp, root, "logger=[tensorboard,mlflow,csv]")
    tasks.train(compose_cfg("train", overrides))
    tasks.test(compose_cfg("train", overrides))
    return overrides, tmp


@pytest.mark.slow
def test_local_store_run_has_metrics_params_report_and_model(local_run: tuple[list[str], Path]) -> None:
    overrides, tmp = local_run
    cfg = compose_cfg("train", overrides)
    exp = tmp / "experiments" / "tiny"
    client = MlflowClient(f"sqlite:///{tmp / 'runs' / 'mlflow.db'}")
    run = only_run(client, "tiny")
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    jsonl_matches_history(client, run.info.run_id, exp / "metrics.jsonl")
    params = run.data.params
    assert params["optimizer.lr"] == str(cfg.optimizer.lr) and params["epochs"] == "2"
    assert params["dataset.root"] == str(tmp / "data") and params["logger.mlflow.log_model"] == "True"
    report = {a.path for a in client.list_artifacts(run.info.run_id, "test")}
    assert {"test/metrics.json", "test/confusion_matrix.png", "test/predictions.csv", "test/report.md"} <= report
    assert run.data.metrics["test/acc"] == pytest.approx(
        json.loads((exp / "test" / "metrics.json").read_text())["accuracy"]
    )
    assert any(a.path.startswith("val_best/") for a in client.list_artifacts(run.info.run_id, "val_best"))
    (model,) = client.search_logged_models([run.info.experiment_id])
    assert model.source_run_id == run.info.run_id and str(model.status).endswith("READY")
    files = {Path(a.path).name for a in client.list_logged_model_artifacts(model.model_id)}
    assert {"best.pt", "config.yaml"} <= files
    # the other loggers beside it: metrics.csv is metrics.jsonl as a table, TensorBoard as before
    lines = read_metrics(exp / "metrics.jsonl")
    rows = read_csv(exp / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [line["epoch"] for line in lines]
    assert all(float(r["val/acc"]) == line["val/acc"] for r, line in zip(rows, lines, strict=True))
    assert list((tmp / "runs" / "tiny").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_resume_continues_the_same_run_and_a_new_start_makes_a_new_one(tmp_path: Path, tiny_folder: Path) -> None:
    overrides = tiny_overrides(tmp_path, tiny_folder, "logger=[mlflow]", "epochs=3")
    with pytest.raises(Interrupted):
        tasks.train(compose_cfg("train", overrides), stop_signal=lambda: StopAfter(9))  # in epoch 2 (6 steps each)
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    interrupted = only_run(client, "tiny")
    assert interrupted.info.status == "KILLED"
    tasks.train(compose_cfg("train", overrides))  # resume=auto
    resumed = only_run(client, "tiny")  # still one run
    assert resumed.info.run_id == interrupted.info.run_id and resumed.info.status == "FINISHED"
    jsonl_matches_history(client, resumed.info.run_id, tmp_path / "experiments" / "tiny" / "metrics.jsonl")
    assert not list((tmp_path / "runs" / "tiny").glob("events.out.tfevents.*"))  # logger=[mlflow]: no TensorBoard
    tasks.train(compose_cfg("train", [*overrides, "overwrite=true"]))  # starting over: a new run
    runs = client.search_runs([resumed.info.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}


# -- a real tracking server -------------------------------------------------------------------------------------


class Proxy:
    """A TCP relay to the server that can go away and come back: a server that drops mid-run, as the client sees it."""

    def __init__(self, target_port: int) -> None:
        self.target, self.port = target_port, free_port()
        self.sockets: list[socket.socket] = []
        self.up()

    def up(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen()
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (a close alone does not)
        except OSError:
            pass
        self.listener.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.mark.slow
def test_server_run_reads_back_as_metrics_jsonl(server: str, tmp_path: Path, tiny_folder: Path) -> None:
    overrides = tiny_overrides(
        tmp_path, tiny_folder, "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={server}", "experiment=srv"
    )
    tasks.train(compose_cfg("train", overrides))
    tasks.test(compose_cfg("train", overrides))
    client = MlflowClient(server)
    run = only_run(client, "srv")
    assert run.info.status == "FINISHED"
    jsonl_matches_history(client, run.info.run_id, tmp_path / "experiments" / "srv" / "metrics.jsonl")
    assert run.data.params["experiment"] == "srv" and run.data.params["loader.batch_size"] == "8"
    assert "test/report.md" in {a.path for a in client.list_artifacts(run.info.run_id, "test")}
    (model,) = client.search_logged_models([run.info.experiment_id])
    assert "best.pt" in {Path(a.path).name for a in client.list_logged_model_artifacts(model.model_id)}
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # the server's store, not the local one


@pytest.mark.slow
def test_a_server_that_drops_mid_run_loses_nothing(
    server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = Proxy(int(server.rsplit(":", 1)[1]))
    logger = MlflowLogger(tracking_uri=f"http://127.0.0.1:{proxy.port}", experiment_name="drop", retries=0)
    logger.begin(RunInfo(folder=tmp_path, name="drop", params={"seed": "1"}))
    logger.log_epoch(1, {"epoch": 1, "val/acc": 0.5})
    proxy.down()
    with caplog.at_level(logging.WARNING):
        started = time.monotonic()
        logger.log_epoch(2, {"epoch": 2, "val/acc": 0.6})  # warned, not raised; held back
        logger.log_epoch(3, {"epoch": 3, "val/acc": 0.7})
        assert time.monotonic() - started < 20
    assert "did not record metrics" in caplog.text and "metrics.jsonl" in caplog.text
    proxy.up()
    logger.log_epoch(4, {"epoch": 4, "val/acc": 0.8})  # the server is back: epochs 2 and 3 are sent too
    logger.end()
    client = MlflowClient(server)
    history = [(m.step, m.value) for m in client.get_metric_history(logger.run_id, "val/acc")]
    assert sorted(history) == [(1, 0.5), (2, 0.6), (3, 0.7), (4, 0.8)]
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    proxy.down()


@pytest.mark.slow
def test_training_goes_on_when_the_server_drops(server: str, tmp_path: Path, tiny_folder: Path) -> None:
    proxy = Proxy(int(server.rsplit(":", 1)[1]))

    class DropAtFirstStep(StopAfter):  # the server goes away once training has begun, and never comes back
        def __call__(self) -> bool:
            proxy.down()
            return False

    uri = f"http://127.0.0.1:{proxy.port}"
    overrides = tiny_overrides(
        tmp_path, tiny_folder, "logger=[mlflow]", f"logger.mlflow.tracking_uri={uri}", "logger.mlflow.retries=0"
    )
    best = tasks.train(compose_cfg("train", [*overrides, "experiment=dropped"]), stop_signal=lambda: DropAtFirstStep(0))
    exp = tmp_path / "experiments" / "dropped"
    assert best is not None and (exp / "best.pt").exists() and (exp / "last.pt").exists()
    assert [line["epoch"] for line in read_metrics(exp / "metrics.jsonl")] == [1, 2]
    run = MlflowClient(server).get_run(json.loads((exp / "mlflow_run.json").read_text())["run_id"])
    assert run.data.metrics == {} and run.info.status == "RUNNING"  # the server really was gone after the start


GRID = ("optimizer.lr=1e-3,2e-3", "optimizer.weight_decay=0.0,0.01")


def four_runs_under_one_parent(client: MlflowClient, sweep_root: Path) -> None:
    """The 2x2 grid of experiment "grid": one parent run with summary.csv, four finished children whose metrics
    are their metrics.jsonl, one per grid point."""
    runs = client.search_runs([client.get_experiment_by_name("grid").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.info.status for r in runs} == {"FINISHED"}
    (sweep_dir,) = sweep_root.iterdir()
    assert "summary.csv" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    swept = set()
    for child in children:
        job = Path(child.data.tags["imgclf.folder"])
        assert job.parent == sweep_dir and child.info.run_name == job.name
        jsonl_matches_history(client, child.info.run_id, job / "metrics.jsonl")
        swept.add((child.data.params["optimizer.lr"], child.data.params["optimizer.weight_decay"]))
    assert swept == {("0.001", "0.0"), ("0.001", "0.01"), ("0.002", "0.0"), ("0.002", "0.01")}


@pytest.mark.slow
def test_a_2x2_sweep_is_four_runs_under_one_parent_with_metrics_jsonl(
    server: str, tmp_path: Path, tiny_folder: Path
) -> None:
    args = [a for a in tiny_overrides(tmp_path, tiny_folder) if not a.startswith("epochs")]
    result = run_cli(
        "train.py", "-m", *args, "epochs=1", "logger=[mlflow]", f"logger.mlflow.tracking_uri={server}",
        "experiment=grid", *GRID,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    four_runs_under_one_parent(MlflowClient(server), tmp_path / "experiments" / "grid" / "multirun")


@pytest.mark.slow
def test_parallel_sweep_jobs_share_the_local_sqlite_store_without_losing_a_run(
    tmp_path: Path, tiny_folder: Path
) -> None:
    """hydra/launcher=joblib with 2 jobs at once, both writing the default local store (SQLite) as they train."""
    args = [a for a in tiny_overrides(tmp_path, tiny_folder) if not a.startswith("epochs")]
    result = run_cli(
        "train.py", "-m", *args, "epochs=2", "logger=[mlflow]", "experiment=grid", *GRID,
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "database is locked" not in result.stdout + result.stderr
    store = tmp_path / "runs" / "mlflow.db"
    four_runs_under_one_parent(MlflowClient(f"sqlite:///{store}"), tmp_path / "experiments" / "grid" / "multirun")


@pytest.mark.slow
def test_an_optuna_study_is_one_parent_run_also_when_continued(tmp_path: Path, tiny_folder: Path) -> None:
    args = ["-m", *(a for a in tiny_overrides(tmp_path, tiny_folder) if not a.startswith("epochs"))]
    args += ["hparams_search=quickstart_optuna", "epochs=1", "logger=[mlflow]", "experiment=study"]
    for n_trials in (2, 3):  # the same command again, asking for one more trial: the study and its parent go on
        result = run_cli("train.py", *args, f"hydra.sweeper.n_trials={n_trials}")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.info.run_name for r in children) == ["trial_0", "trial_1", "trial_2"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {"summary.csv", "best.yaml"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    for child in children:
        jsonl_matches_history(client, child.info.run_id, Path(child.data.tags["imgclf.folder"]) / "metrics.jsonl")


@pytest.mark.slow
def test_test_py_fails_fast_on_an_unreachable_server_and_keeps_the_report(local_run: tuple[list[str], Path]) -> None:
    overrides, tmp = local_run
    report = tmp / "experiments" / "tiny" / "test" / "metrics.json"
    before = report.stat().st_mtime_ns
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingError, match=uri.replace(".", r"\.")):
        tasks.test(compose_cfg("train", [*overrides, f"logger.mlflow.tracking_uri={uri}"]))
    assert report.stat().st_mtime_ns == before  # refused before evaluating: the report is untouched


@pytest.mark.slow
def test_under_torchrun_only_rank_0_logs_one_run(tmp_path: Path, tiny_folder: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    command += [f"--master_port={free_port()}", str(ROOT / "train.py")]
    command += tiny_overrides(
        tmp_path, tiny_folder, "logger=[mlflow,csv]", "loader.batch_size=4", "loader.cache=memory"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    run = only_run(client, "tiny")  # one run, not one per rank
    exp = tmp_path / "experiments" / "tiny"
    jsonl_matches_history(client, run.info.run_id, exp / "metrics.jsonl")
    assert run.data.metrics["world_size"] == 2 and run.data.metrics["global_batch_size"] == 8
    assert len(read_csv(exp / "metrics.csv")) == 2  # one row per epoch: one writer
