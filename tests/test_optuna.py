"""Optuna searches: python train.py -m hparams_search=<name> (imgclf's own sweeper, src/hydra_plugins).

Every sweep trains the tiny image folder for a few epochs in a subprocess, as a user runs it; the study,
summary.csv, best.yaml, the leaderboard and TensorBoard are read back from disk.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from helpers import CONF, ROOT, read_csv, run_cli, tiny_overrides
from imgclf.sweeps import search_space

SEARCH = "quickstart_optuna"


def sweep_args(tmp_path: Path, folder: Path, *extra: str, epochs: int = 1) -> list[str]:
    """A tiny quickstart_optuna sweep under tmp_path (the folder's images, ``epochs`` each)."""
    args = [a for a in tiny_overrides(tmp_path, folder) if not a.startswith("epochs=")]
    return ["-m", f"hparams_search={SEARCH}", *args, f"epochs={epochs}", *extra]


def sweep_dir(tmp_path: Path, search: str = SEARCH) -> Path:
    return tmp_path / "experiments" / "tiny" / "optuna" / search


def load(folder: Path, name: str = SEARCH) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}")


def states(study: optuna.Study) -> dict[int, str]:
    return {t.number: t.state.name for t in study.get_trials(deepcopy=False)}


def stamps(folder: Path) -> dict[str, int]:
    """mtime (ns) of every file of a trial folder but the .hydra records."""
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and ".hydra" not in p.parts
    }


def epochs_done(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "config,experiment,search",
    [("train", "quickstart", "quickstart_optuna"), ("transfer", "transfer", "transfer_optuna")],
)
def test_hparams_search_configs_compose_with_a_stable_sweep_folder(config: str, experiment: str, search: str) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config, overrides=[f"hparams_search={search}"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("ImgclfOptunaSweeper")
    # no ${now:}: every run meets the study; conf/train.yaml is the quickstart, and its experiment is named so
    assert cfg.hydra.sweep.dir == f"experiments/{experiment}/optuna/{search}"
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "trial_${hydra.job.num}"
    space = search_space.parse([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])
    assert space.distributions and not space.fixed
    assert cfg.sweep_trial is None


def test_search_space_reads_hydra_sweep_syntax() -> None:
    space = search_space.parse(
        [
            "optimizer.lr=tag(log, interval(1e-4, 1e-1))",
            "loader.batch_size=choice(32, 64)",
            "model.dropout=range(0.0, 0.5, 0.1)",
            "epochs=interval(2, 9)",
            "model.hidden=choice([], [256])",
            "epochs=3",
        ]
    )
    assert space.distributions == {
        "optimizer.lr": FloatDistribution(1e-4, 1e-1, log=True),
        "loader.batch_size": CategoricalDistribution([32, 64]),
        "model.dropout": FloatDistribution(0.0, 0.4, step=0.1),  # stop excluded, as in Hydra's grid sweeps
        "model.hidden": CategoricalDistribution(["[]", "[256]"]),
    }
    assert space.fixed == {"epochs": "epochs=3"}  # the later override of a key wins
    assert search_space.as_override("model.hidden", "[256]") == "model.hidden=[256]"  # a list, not a string
    assert search_space.as_override("optimizer.lr", 0.001) == "optimizer.lr=0.001"
    assert search_space.as_override("model.dropout", 0.1 * 3) == "model.dropout=0.3"
    assert search_space.parse(["a=range(1, 7, 2)"]).grid() == {"a": [1, 3, 5]}


@pytest.mark.slow
def test_optuna_sweep_continues_its_study_to_n_trials_in_all(tmp_path: Path, tiny_folder: Path) -> None:
    first = run_cli("train.py", *sweep_args(tmp_path, tiny_folder, "hydra.sweeper.n_trials=4"), timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    folder = sweep_dir(tmp_path)
    assert states(load(folder)) == dict.fromkeys(range(4), "COMPLETE")
    before = {n: stamps(folder / f"trial_{n}") for n in range(4)}
    assert all("best.pt" in files and "metrics.jsonl" in files for files in before.values())

    more = run_cli("train.py", *sweep_args(tmp_path, tiny_folder, "hydra.sweeper.n_trials=6"), timeout=600)
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    study = load(folder)
    assert states(study) == dict.fromkeys(range(6), "COMPLETE")  # 2 more, none run again
    assert "4 of n_trials=6 finished, 2 to run" in more.stdout + more.stderr
    assert {n: stamps(folder / f"trial_{n}") for n in range(4)} == before  # finished trials untouched
    rows = read_csv(folder / "summary.csv")
    assert [r["job"] for r in rows] == [str(n) for n in range(6)] and {r["status"] for r in rows} == {"COMPLETED"}

    # best.yaml: a primary config of the best trial, composed by the command the sweep printed
    best = study.best_trial
    command = f"python train.py --config-dir {folder.resolve()} -cn best"
    assert command in more.stdout + more.stderr and command in (folder / "best.yaml").read_text()
    shown = run_cli("train.py", "--config-dir", str(folder), "-cn", "best", "--cfg", "job")
    assert shown.returncode == 0, shown.stderr[-2000:]
    composed = yaml.safe_load(shown.stdout)
    for key, value in best.params.items():
        section, name = key.split(".")
        assert composed[section][name] == pytest.approx(value), key
    assert composed["dataset"]["root"] == str(tiny_folder) and composed["epochs"] == 1
    assert composed["experiment"] == f"{SEARCH}_best" and composed["sweep_trial"] is None


def write_search(conf: Path, name: str, lr_choice: str, pruner: str = "none", pruner_settings: str = "{}") -> Path:
    """A search config ``conf/hparams_search/<name>.yaml`` that tries each learning rate of ``lr_choice`` once
    (the grid sampler) with ``pruner``; the config folder, for --config-dir."""
    path = conf / "hparams_search" / f"{name}.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(f"""# @package _global_
defaults:
  - override /hydra/sweeper: imgclf_optuna
  - override /hydra/sweeper/sampler: grid
  - override /hydra/sweeper/pruner: {pruner}
hydra:
  sweep:
    dir: ${{paths.experiments}}/${{experiment}}/optuna/{name}
    subdir: trial_${{hydra.job.num}}
  sweeper:
    study_name: {name}
    n_trials: 5  # more than the grid's points
    pruner: {pruner_settings}
    params:
      optimizer.lr: choice({lr_choice})
""")
    return conf


def run_search(tmp_path: Path, folder: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    args = [a for a in tiny_overrides(tmp_path, folder) if not a.startswith("epochs=")]
    return run_cli(
        "train.py", "--config-dir", str(tmp_path / "conf"), "-m", f"hparams_search={name}", *args, *extra, timeout=600
    )


def hparams_of(run: Path) -> tuple[dict, list[str], list[float]]:
    """The HParams entry of a TensorBoard run: its values, its metric tags and the trial/pruned curve."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(run))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    values = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.session_start_info.hparams.items()}
    tags = [m.name.tag for m in experiment.experiment.metric_infos]
    return values, tags, [s.value for s in events.Scalars("trial/pruned")]


@pytest.mark.slow
def test_pruner_stops_a_trial_with_an_absurd_lr_and_every_view_marks_it(tmp_path: Path, tiny_folder: Path) -> None:
    # the pruner stops a trial whose val/loss passes 3 after any epoch
    write_search(tmp_path / "conf", "prune_check", "0.003, 1000.0", "threshold", "{upper: 3.0}")
    result = run_search(tmp_path, tiny_folder, "prune_check", "epochs=3", "monitor=val/loss", "mode=min")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = sweep_dir(tmp_path, "prune_check")
    trials = {t.params["optimizer.lr"]: t for t in load(folder, "prune_check").trials}
    assert len(trials) == 2 and "the grid has 2 points" in result.stdout + result.stderr
    absurd, sane = trials[1000.0], trials[0.003]
    assert absurd.state == TrialState.PRUNED and sane.state == TrialState.COMPLETE
    assert absurd.user_attrs["pruned_at_epoch"] == 1 and list(absurd.intermediate_values) == [1]
    assert len(epochs_done(folder / f"trial_{absurd.number}")) == 1  # trained fewer epochs
    assert [r["trial/pruned"] for r in epochs_done(folder / f"trial_{sane.number}")] == [0, 0, 0]

    rows = {r["job"]: r for r in read_csv(folder / "summary.csv")}
    assert rows[str(absurd.number)]["status"] == "PRUNED" and "pruned after epoch 1" in rows[str(absurd.number)]["note"]
    assert rows[str(sane.number)]["status"] == "COMPLETED"

    board = subprocess.run(
        [sys.executable, "-m", "imgclf.leaderboard", "--experiments", str(tmp_path / "experiments")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert board.returncode == 0, board.stderr
    status = {r["name"]: r["status"] for r in read_csv(folder / "leaderboard.csv")}  # the sweep's own table
    assert status == {f"trial_{absurd.number}": "pruned", f"trial_{sane.number}": "finished"}

    for trial, curve in ((absurd, [1.0]), (sane, [0.0, 0.0, 0.0])):
        values, tags, pruned = hparams_of(
            tmp_path / "runs" / "tiny" / "optuna" / "prune_check" / f"trial_{trial.number}"
        )
        assert values["trial"] == trial.number and values["optimizer.lr"] == pytest.approx(trial.params["optimizer.lr"])
        assert "trial/pruned" in tags and pruned == curve


@pytest.mark.slow
def test_H5_a_killed_optuna_sweep_continues_and_its_interrupted_trial_is_failed_not_counted(
    tmp_path: Path, tiny_folder: Path
) -> None:
    args = [
        sys.executable,
        str(ROOT / "train.py"),
        *sweep_args(tmp_path, tiny_folder, "hydra.sweeper.n_trials=2", epochs=6),
    ]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = sweep_dir(tmp_path)
    metrics = folder / "trial_0" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-trial: no handler runs, trial 0 stays RUNNING in the study
    proc.wait(timeout=60)
    assert states(load(folder)) == {0: "RUNNING"}

    again = run_cli("train.py", *args[2:], timeout=600)  # the same command
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    study = load(folder)
    assert states(study) == {0: "FAIL", 1: "COMPLETE", 2: "COMPLETE"}  # n_trials=2 finished, the killed one not counted
    assert "interrupted" in study.trials[0].user_attrs["error"]
    assert len(epochs_done(folder / "trial_1")) == len(epochs_done(folder / "trial_2")) == 6
    rows = read_csv(folder / "summary.csv")
    assert [(r["job"], r["status"]) for r in rows] == [("0", "FAILED"), ("1", "COMPLETED"), ("2", "COMPLETED")]


@pytest.mark.slow
def test_optuna_sweep_never_reuses_a_trial_folder_that_holds_a_run(tmp_path: Path, tiny_folder: Path) -> None:
    args = sweep_args(tmp_path, tiny_folder, "hydra.sweeper.n_trials=1")
    assert run_cli("train.py", *args).returncode == 0
    folder = sweep_dir(tmp_path)
    kept = stamps(folder / "trial_0")
    (folder / "study.db").unlink()  # a new study would number its first trial 0 again
    again = run_cli("train.py", *args)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert f"{folder / 'trial_0'} already holds a run" in again.stdout + again.stderr
    assert stamps(folder / "trial_0") == kept
    assert states(load(folder)) == {0: "FAIL"}


def log_span(log: Path) -> tuple[datetime, datetime]:
    """The first and last timestamps of a job's train.log."""
    times = re.findall(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]", log.read_text(), flags=re.MULTILINE)
    return tuple(datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f") for t in (times[0], times[-1]))  # type: ignore[return-value]


@pytest.mark.slow
def test_joblib_sweep_runs_two_trials_at_once_each_on_its_share_of_the_cores(tmp_path: Path, tiny_folder: Path) -> None:
    result = run_cli(
        "train.py",
        *sweep_args(
            tmp_path,
            tiny_folder,
            "hydra.sweeper.n_trials=2",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            epochs=3,
        ),
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 to run, 2 at a time" in result.stdout + result.stderr  # the sweeper asks as many as the launcher runs
    folder = sweep_dir(tmp_path)
    assert states(load(folder)) == {0: "COMPLETE", 1: "COMPLETE"}
    (start0, end0), (start1, end1) = (log_span(folder / f"trial_{n}" / "train.log") for n in (0, 1))
    assert start0 < end1 and start1 < end0, "the two trials did not overlap"
    cores = len(os.sched_getaffinity(0))
    for n in (0, 1):
        line = re.search(
            r"sweep job (\d+), 2 at a time: (\d+) of (\d+) CPU thread",
            (folder / f"trial_{n}" / "train.log").read_text(),
        )
        assert line is not None and int(line[1]) == n
        assert (int(line[2]), int(line[3])) == (max(1, cores // 2), cores)


@pytest.mark.slow
def test_B4_a_failed_optuna_trial_is_marked_the_others_finish_and_the_sweep_exits_1(
    tmp_path: Path, tiny_folder: Path
) -> None:
    write_search(tmp_path / "conf", "fail_check", "abc, 0.003")
    result = run_search(tmp_path, tiny_folder, "fail_check", "epochs=1")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "failed (summary.csv names why)" in result.stdout + result.stderr
    folder = sweep_dir(tmp_path, "fail_check")
    trials = {t.params["optimizer.lr"]: t for t in load(folder, "fail_check").trials}
    assert trials["abc"].state == TrialState.FAIL and trials[0.003].state == TrialState.COMPLETE
    rows = {r["overrides"]: r for r in read_csv(folder / "summary.csv")}
    assert rows["optimizer.lr=abc"]["status"] == "FAILED" and "optimizer.lr" in rows["optimizer.lr=abc"]["error"]
    assert rows["optimizer.lr=0.003"]["status"] == "COMPLETED"
