"""What users run: python train.py / test.py, a -m sweep, Ctrl-C/SIGTERM, bad overrides."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, run_cli, tiny_overrides
from imgclf.experiment.checkpoint import load_checkpoint
from imgclf.experiment.run_log import read_metrics


def test_train_then_test_from_the_command_line(tmp_path: Path, tiny_folder: Path) -> None:
    args = tiny_overrides(tmp_path, tiny_folder)
    trained = run_cli("train.py", *args)
    assert trained.returncode == 0, trained.stderr[-3000:]
    exp = tmp_path / "experiments" / "tiny"
    assert (exp / "best.pt").is_file() and len(list((exp / ".hydra" / "train").glob("*/config.yaml"))) == 1
    tested = run_cli("test.py", *args)
    assert tested.returncode == 0, tested.stderr[-3000:]
    metrics = json.loads((exp / "test" / "metrics.json").read_text())
    assert metrics["samples"] == 18 and "macro avg" in tested.stderr + tested.stdout
    assert len(list((exp / ".hydra" / "test").glob("*/config.yaml"))) == 1  # kept apart from train's


@pytest.mark.slow
def test_D1_test_without_a_checkpoint_says_how_to_make_one(tmp_path: Path, tiny_folder: Path) -> None:
    result = run_cli("test.py", *tiny_overrides(tmp_path, tiny_folder))
    assert result.returncode == 1
    assert "python train.py -cn=train" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "override,message",
    [
        ("optimizer.lr=abc", "optimizer.lr='abc'"),
        ("epochs=-1", "epochs=-1"),
        ("epochz=3", "epochz"),
        ("optimizer=adamx", "adamx"),
    ],
)
@pytest.mark.slow
def test_B1_B2_bad_overrides_fail_fast_with_the_key_and_no_traceback(
    tmp_path: Path, tiny_folder: Path, override: str, message: str
) -> None:
    result = run_cli("train.py", *tiny_overrides(tmp_path, tiny_folder), override)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "experiments" / "tiny" / "last.pt").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        ("optimizer.lr==3", "Error parsing override 'optimizer.lr==3'"),  # override grammar: Hydra's parser
        ("dataset=image_folder", "no value for dataset.root: set it on the command line"),  # a ??? left unset
    ],
)
@pytest.mark.slow
def test_B1_bad_override_grammar_or_an_unset_value_stops_before_anything_is_read_or_written(
    tmp_path: Path, tiny_folder: Path, override: str, message: str
) -> None:
    outputs = [a for a in tiny_overrides(tmp_path, tiny_folder) if a.startswith("paths.")]
    data = [f"dataset.root={tiny_folder}"] if "root" not in message else []
    result = run_cli("train.py", *outputs, *data, override)
    assert result.returncode == 1 and message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []  # no experiments/, runs/ or cache/: the data was never read


@pytest.mark.slow
def test_A12_missing_data_folder_names_the_absolute_path(tmp_path: Path) -> None:
    result = run_cli("train.py", *tiny_overrides(tmp_path, tmp_path / "nowhere"), "dataset=plates")
    assert result.returncode == 1
    assert f"dataset folder not found: {tmp_path / 'nowhere'}" in result.stderr + result.stdout


@pytest.mark.slow
def test_B4_sweep_gives_every_job_its_own_dirs_and_a_summary(tmp_path: Path, tiny_folder: Path) -> None:
    args = [a for a in tiny_overrides(tmp_path, tiny_folder) if not a.startswith("epochs")]
    result = run_cli("train.py", "-m", *args, "epochs=1", "optimizer=adamw,sgd", "optimizer.lr=1e-3,abc")
    assert result.returncode != 0  # two jobs fail the lr check, the sweep says so
    sweeps = list((tmp_path / "experiments" / "tiny" / "multirun").iterdir())
    assert len(sweeps) == 1
    rows = list(csv.DictReader(open(sweeps[0] / "summary.csv")))
    assert [r["status"] for r in rows] == ["COMPLETED", "FAILED", "COMPLETED", "FAILED"]
    assert all(float(r["best"]) >= 0 for r in rows if r["status"] == "COMPLETED")
    assert "optimizer.lr" in rows[1]["error"] and "optimizer.lr=abc" in rows[1]["overrides"]
    job_dirs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name[0].isdigit())
    names = [p.name for p in job_dirs]  # named after the overrides, readable in TensorBoard
    assert names[0].startswith("0_") and names[0].endswith("optimizer.lr=0.001,optimizer=adamw")
    for row, job_dir in zip(rows, job_dirs, strict=True):
        assert (job_dir / "best.pt").exists() == (row["status"] == "COMPLETED")
    runs = tmp_path / "runs" / "tiny" / "multirun" / sweeps[0].name
    assert sorted(p.name for p in runs.iterdir()) == [job_dirs[0].name, job_dirs[2].name]
    output = result.stdout + result.stderr  # the data table once, then one line for the job over the same data
    assert output.count("data:\n") == 1 and output.count("data: as in the previous job") == 1
    assert "sweep done: 4 jobs (2 COMPLETED, 2 FAILED); best val/acc " in output  # and the best job named


@pytest.mark.slow
def test_quickstart_reaches_095_test_accuracy(tmp_path: Path) -> None:
    out = [
        f"paths.experiments={tmp_path / 'experiments'}",
        f"paths.runs={tmp_path / 'runs'}",
        f"dataset.home={tmp_path / 'digits'}",
        "progress=false",
    ]
    assert run_cli("train.py", *out).returncode == 0
    tested = run_cli("test.py", *out)
    assert tested.returncode == 0, tested.stderr[-2000:]
    metrics = json.loads((tmp_path / "experiments" / "quickstart" / "test" / "metrics.json").read_text())
    assert metrics["samples"] == 269 and metrics["accuracy"] >= 0.95
    # `python train.py` is the quickstart: the recipe's name finds the same experiment, with nothing to do
    again = run_cli("test.py", "-cn=quickstart", *out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "experiments").iterdir()) == ["quickstart"]


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.slow
def test_E1_signal_writes_last_checkpoint_and_resume_finishes(
    tmp_path: Path, tiny_folder: Path, sig: signal.Signals, code: int
) -> None:
    args = [*tiny_overrides(tmp_path, tiny_folder), "epochs=400"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = tmp_path / "experiments" / "tiny" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, output[-2000:]
    state = load_checkpoint(tmp_path / "experiments" / "tiny" / "last.pt")["state"]
    epochs_logged = len(read_metrics(metrics))
    assert state["epoch"] == epochs_logged >= 2
    resumed = run_cli("train.py", *tiny_overrides(tmp_path, tiny_folder), f"epochs={state['epoch'] + 1}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming tiny from epoch" in resumed.stderr + resumed.stdout
    assert [r["epoch"] for r in read_metrics(metrics)] == list(range(1, state["epoch"] + 2))


SHARED_PLATES = ROOT.parent / "shared" / "data" / "plates"


@pytest.mark.skipif(not SHARED_PLATES.is_dir(), reason="../shared/data/plates is not beside the checkout")
@pytest.mark.slow
def test_plates_recipe_trains_and_tests_on_the_shared_photos(tmp_path: Path) -> None:
    out = [
        f"paths.experiments={tmp_path / 'experiments'}",
        f"paths.runs={tmp_path / 'runs'}",
        "epochs=2",
        "progress=false",
    ]
    trained = run_cli("train.py", "-cn=plates_tinyvgg", *out)
    assert trained.returncode == 0, trained.stderr[-2000:]
    exp = tmp_path / "experiments" / "plates_tinyvgg"
    rows = list(csv.DictReader(open(exp / "splits.csv")))
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert counts == {"train": 24, "val": 8, "test": 8}  # stratified carve of the 40 train photos
    assert all(r["path"].startswith(str(SHARED_PLATES.resolve())) for r in rows)  # root resolved from the project
    tested = run_cli("test.py", "-cn=plates_tinyvgg", *out)
    assert tested.returncode == 0, tested.stderr[-2000:]
    metrics = json.loads((exp / "test" / "metrics.json").read_text())
    assert metrics["samples"] == 8 and set(metrics["per_class"]) == {"cleaned", "dirty"}


@pytest.mark.slow
def test_test_py_of_an_experiment_never_trained_says_so_and_leaves_no_folder(tmp_path: Path, tiny_folder: Path) -> None:
    result = run_cli("test.py", *tiny_overrides(tmp_path, tiny_folder, "experiment=never_trained"))
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "no experiment 'never_trained' to test" in output, output[-2000:]
    assert "python train.py" in output and "Traceback" not in output
    assert not (tmp_path / "experiments" / "never_trained").exists()  # Hydra made no folder for its log
