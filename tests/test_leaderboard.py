"""imgclf-leaderboard: rows, columns, ranking, sweep tables and robustness, on copies of a trained
experiment whose config.yaml / metrics.jsonl / checkpoints are edited to differ."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from helpers import ROOT, read_csv
from imgclf.cli import leaderboard
from imgclf.experiment.run_log import read_metrics

SWEEP = "beta/multirun/2026-01-01_00-00-00"
JOBS = ("0_optimizer.lr=0.1,optimizer=adamw", "1_optimizer.lr=0.01,optimizer=adamw")
VAL_ACC = {
    "alpha": [0.5, 0.8, 0.7],
    "beta": [0.6, 0.9, 0.9],
    f"{SWEEP}/{JOBS[0]}": [0.4, 0.3, 0.45],
    f"{SWEEP}/{JOBS[1]}": [0.7, 0.95, 0.2],
}
TEST_REPORT = {"accuracy": 0.875, "f1": 0.8612, "accuracy_ci": [0.8, 0.95], "ece": 0.0512, "loss": 0.4}


def copy_experiment(
    src: Path, dest: Path, config: dict[str, Any] | None = None, val_acc: list[float] | None = None
) -> Path:
    """A copy of ``src`` with dotted ``config`` keys set and val/acc of epoch i set to ``val_acc[i]``."""
    shutil.copytree(src, dest)
    if config:
        edit_config(dest, config)
    if val_acc:
        records = read_metrics(dest / "metrics.jsonl")
        assert len(records) == len(val_acc)
        for record, acc in zip(records, val_acc, strict=True):
            record["val/acc"] = acc
        write_records(dest, records)
    return dest


def edit_config(folder: Path, values: dict[str, Any]) -> None:
    config = yaml.safe_load((folder / "config.yaml").read_text())
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


def write_records(folder: Path, records: list[dict[str, Any]]) -> None:
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def best_in_file(folder: Path, key: str = "val/acc", mode: str = "max") -> tuple[float, int]:
    """The best value of ``key`` in the folder's metrics.jsonl and its first epoch, computed here."""
    records = read_metrics(folder / "metrics.jsonl")
    pick = max if mode == "max" else min
    best = pick(r[key] for r in records)
    return best, next(r["epoch"] for r in records if r[key] == best)


def split_markdown_row(line: str) -> list[str]:
    """The cells of one markdown table line, undoing ``\\|`` and ``\\\\`` escapes."""
    cells, cell, chars = [], "", iter(line.strip()[1:-1])
    for char in chars:
        if char == "\\":
            cell += next(chars)
        elif char == "|":
            cells.append(cell.strip())
            cell = ""
        else:
            cell += char
    return [*cells, cell.strip()]


def markdown_table(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert set(lines[1]) <= {"|", "-"}
    return [split_markdown_row(line) for line in lines[:1] + lines[2:]]


def run_board(root: Path, *args: str) -> list[dict[str, str]]:
    assert leaderboard.main(["--experiments", str(root), *args]) == 0
    return read_csv(root / "leaderboard.csv")


def config_columns(header: list[str], first_fixed: str = "best val/acc") -> list[str]:
    return header[1 : header.index(first_fixed)]


@pytest.fixture
def board(tmp_path: Path, trained_tiny: tuple[list[str], Path]) -> Path:
    """experiments/{alpha, beta, beta/multirun/<date>/<two jobs>}: lr and dropout differ, beta has a
    test report, plus folders that are not experiments (.hydra records, a test report folder)."""
    _, src = trained_tiny
    root = tmp_path / "experiments"
    copy_experiment(src, root / "alpha", {"optimizer.lr": 0.001, "model.dropout": 0.3}, VAL_ACC["alpha"])
    beta = copy_experiment(src, root / "beta", {"optimizer.lr": 0.01}, VAL_ACC["beta"])
    (beta / "test").mkdir(exist_ok=True)
    (beta / "test" / "metrics.json").write_text(json.dumps(TEST_REPORT))
    for job, lr in zip(JOBS, (0.1, 0.01), strict=True):
        copy_experiment(src, root / SWEEP / job, {"optimizer.lr": lr}, VAL_ACC[f"{SWEEP}/{job}"])
    (root / SWEEP / "multirun.yaml").write_text("hydra: {}\n")
    for record in (root / "alpha" / ".hydra" / "train" / "2026-01-01_00-00-00", root / "alpha" / "test_val"):
        record.mkdir(parents=True)
        shutil.copy(src / "config.yaml", record / "config.yaml")
    return root


def test_one_row_per_experiment_and_job_with_best_value_and_epoch_from_metrics(board: Path) -> None:
    rows = {row["name"]: row for row in run_board(board)}
    assert set(rows) == set(VAL_ACC)  # not .hydra/..., not test_val/, not the sweep folder itself
    for name, row in rows.items():
        best, epoch = best_in_file(board / name)
        assert float(row["best val/acc"]) == pytest.approx(best, abs=5e-5)
        assert row["best epoch"] == str(epoch)
        assert row["epochs"] == "3/3" and row["status"] == "finished"
        seconds = sum(r["epoch_seconds"] for r in read_metrics(board / name / "metrics.jsonl"))
        assert row["time"] == f"{seconds:.1f}s"
    assert rows["beta"]["best epoch"] == "2"  # a tie keeps the first epoch, as the engine does


def test_only_config_keys_that_differ_become_columns_and_targets_are_shortened(board: Path) -> None:
    header = list(run_board(board)[0])
    assert config_columns(header) == ["model.dropout", "optimizer.lr"]
    edit_config(board / "beta", {"optimizer._target_": "torch.optim.RAdam"})
    rows = {row["name"]: row for row in run_board(board)}
    assert config_columns(list(rows["beta"])) == ["model.dropout", "optimizer", "optimizer.lr"]
    assert rows["beta"]["optimizer"] == "RAdam" and rows["alpha"]["optimizer"] == "AdamW"
    assert rows["alpha"]["optimizer.lr"] == "0.001" and rows["alpha"]["model.dropout"] == "0.3"


def write_hydra_record(folder: Path, choices: dict[str, str], unresolved: dict[str, Any]) -> None:
    """What Hydra keeps of a training command: its groups' options and the config before interpolation."""
    record = folder / ".hydra" / "train" / "2026-02-02_00-00-00"
    record.mkdir(parents=True, exist_ok=True)
    hydra = {"hydra": {"runtime": {"choices": {**choices, "hydra/launcher": "basic", "hydra/output": "default"}}}}
    (record / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    (record / "config.yaml").write_text(yaml.safe_dump(unresolved))


def test_group_options_stand_for_the_keys_they_imply_and_interpolated_keys_are_left_out(board: Path) -> None:
    unresolved = {"model": {"num_classes": "${dataset.num_classes}"}}
    for name in VAL_ACC:
        dataset = "flowers5" if name == "alpha" else "plates"
        edit_config(
            board / name, {"dataset.root": f"/data/{dataset}", "model.num_classes": 5 if name == "alpha" else 2}
        )
        write_hydra_record(board / name, {"dataset": dataset, "optimizer": "adamw"}, unresolved)
    rows = {row["name"]: row for row in run_board(board)}
    header = config_columns(list(rows["alpha"]))
    assert header == ["dataset", "model.dropout", "optimizer.lr"]  # not dataset.root, model.num_classes, optimizer
    assert rows["alpha"]["dataset"] == "flowers5" and rows["beta"]["dataset"] == "plates"
    edit_config(board / "beta", {"dataset.root": "/elsewhere/plates"})  # the same option, another folder
    rows = {row["name"]: row for row in run_board(board)}
    assert config_columns(list(rows["beta"])) == ["dataset", "dataset.root", "model.dropout", "optimizer.lr"]
    assert rows["beta"]["dataset.root"] == "/elsewhere/plates" and rows["alpha"]["dataset.root"] == "/data/flowers5"


def test_rows_are_ranked_best_first_by_the_monitored_metric(board: Path) -> None:
    rows = run_board(board)
    values = [float(row["best val/acc"]) for row in rows]
    assert values == sorted(values, reverse=True) and rows[0]["name"] == f"{SWEEP}/{JOBS[1]}"


def test_mode_min_ranks_the_smallest_val_loss_first(board: Path) -> None:
    for name in VAL_ACC:
        edit_config(board / name, {"monitor": "val/loss", "mode": "min"})
        records = read_metrics(board / name / "metrics.jsonl")
        for i, record in enumerate(records):  # distinct losses per experiment
            record["val/loss"] = 1.0 + VAL_ACC[name][i] * (1 if i % 2 else -1)
        write_records(board / name, records)
    rows = run_board(board)
    assert "best val/loss" in rows[0] and "best val/acc" not in rows[0]
    for row in rows:
        best, epoch = best_in_file(board / row["name"], "val/loss", "min")
        assert float(row["best val/loss"]) == pytest.approx(best, abs=5e-5) and row["best epoch"] == str(epoch)
    values = [float(row["best val/loss"]) for row in rows]
    assert values == sorted(values)


def test_rows_monitoring_different_metrics_say_which_in_a_monitor_column(board: Path) -> None:
    edit_config(board / "alpha", {"monitor": "val/loss", "mode": "min"})
    rows = {row["name"]: row for row in run_board(board)}
    assert rows["alpha"]["monitor"] == "val/loss (min)" and rows["beta"]["monitor"] == "val/acc (max)"
    assert float(rows["alpha"]["best"]) == pytest.approx(best_in_file(board / "alpha", "val/loss", "min")[0], abs=5e-5)
    assert float(rows["beta"]["best"]) == pytest.approx(0.9)
    assert config_columns(list(rows["alpha"]), "monitor") == ["model.dropout", "optimizer.lr"]  # not monitor/mode


def test_test_metrics_appear_when_a_test_report_exists(board: Path) -> None:
    rows = {row["name"]: row for row in run_board(board)}
    assert rows["beta"]["test/acc"] == "0.8750" and rows["beta"]["test/f1"] == "0.8612"
    assert rows["beta"]["test/acc 95% CI"] == "0.8000-0.9500" and rows["beta"]["test/ece"] == "0.0512"
    assert rows["alpha"]["test/acc"] == ""
    # an older report without the interval and the ECE: those columns are left out, not required
    (board / "beta" / "test" / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "f1": 0.25}))
    rows = {row["name"]: row for row in run_board(board)}
    assert rows["beta"]["test/acc"] == "0.5000" and "test/ece" not in rows["beta"]
    assert "test/acc 95% CI" not in rows["beta"]
    sweep_header = list(read_csv(board / SWEEP / "leaderboard.csv")[0])
    assert not any(title.startswith("test/") for title in sweep_header)


def test_sort_by_a_test_metric(board: Path) -> None:
    (board / "alpha" / "test").mkdir()
    (board / "alpha" / "test" / "metrics.json").write_text(json.dumps({**TEST_REPORT, "accuracy": 0.95}))
    names = [row["name"] for row in run_board(board, "--sort", "test/accuracy")]
    assert names[:2] == ["alpha", "beta"]  # the others have no test report: last


def test_parameter_count_from_the_checkpoint_or_counted_for_older_ones(board: Path) -> None:
    payload = torch.load(board / "alpha" / "best.pt", weights_only=True)
    rows = {row["name"]: row for row in run_board(board)}
    assert rows["alpha"]["params"] == str(payload["num_parameters"])
    for name in ("best.pt", "last.pt"):  # written before num_parameters was stored
        old = torch.load(board / "beta" / name, weights_only=True)
        old.pop("num_parameters")
        torch.save(old, board / "beta" / name)
    rows = {row["name"]: row for row in run_board(board)}
    assert rows["beta"]["params"] == str(payload["num_parameters"])  # buffers (mean/std/BatchNorm) left out


def test_a_sweep_folder_gets_its_own_table_of_its_jobs(board: Path) -> None:
    run_board(board)
    jobs = read_csv(board / SWEEP / "leaderboard.csv")
    assert [row["name"] for row in jobs] == [JOBS[1], JOBS[0]]  # 0.95 before 0.45
    assert config_columns(list(jobs[0])) == ["optimizer.lr"]  # model.dropout only differs outside the sweep
    assert [row["optimizer.lr"] for row in jobs] == ["0.01", "0.1"]
    assert (board / SWEEP / "leaderboard.md").read_text().count(JOBS[0]) == 1
    assert not (board / "beta" / "leaderboard.csv").exists()


def test_csv_parses_back_to_the_markdown_rows(board: Path) -> None:
    edit_config(board / "alpha", {"model.note": 'a|b, "quoted"\\\nnext'})  # pipe, comma, quotes, backslash, newline
    assert leaderboard.main(["--experiments", str(board)]) == 0
    with open(board / "leaderboard.csv", newline="") as f:
        from_csv = list(csv.reader(f))
    from_markdown = markdown_table((board / "leaderboard.md").read_text())
    assert from_csv == from_markdown
    assert 'a|b, "quoted"\\ next' in [cell for row in from_csv for cell in row]


def test_G1_torn_metrics_corrupt_checkpoint_and_missing_config_do_not_crash(board: Path) -> None:
    with open(board / "alpha" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "val/acc": 0.99, "train/lo')  # a crash in the middle of a line
    (board / "alpha" / "best.pt").write_bytes(b"PK\x03\x04 not really a zip")
    (board / "beta" / "config.yaml").unlink()
    broken = board / "gamma"
    broken.mkdir()
    (broken / "last.pt").write_bytes(b"")
    (broken / "config.yaml").write_text("optimizer: [unclosed\n")
    rows = {row["name"]: row for row in run_board(board)}
    alpha = rows["alpha"]
    assert float(alpha["best val/acc"]) == pytest.approx(0.8) and alpha["epochs"] == "3/3"
    assert "1 unreadable line(s) in metrics.jsonl" in alpha["notes"] and "best.pt unreadable" in alpha["notes"]
    assert alpha["params"] == rows[f"{SWEEP}/{JOBS[0]}"]["params"] != ""  # still counted from last.pt
    beta = rows["beta"]  # config.yaml gone: the checkpoint's copy of the config stands in
    assert "no config.yaml" in beta["notes"] and beta["optimizer.lr"] == "0.001"  # the original lr
    assert float(beta["best val/acc"]) == pytest.approx(0.9) and beta["epochs"] == "3/3"
    gamma = rows["gamma"]
    assert gamma["status"] == "failed" and gamma["best val/acc"] == "" and gamma["epochs"] == "0/?"
    assert "config.yaml unreadable" in gamma["notes"] and "last.pt unreadable" in gamma["notes"]
    assert list(rows)[-1] == "gamma"  # no value: last


def test_status_running_stopped_early_incomplete_failed(board: Path, trained_tiny: tuple[list[str], Path]) -> None:
    (board / "alpha" / ".lock").write_text(str(os.getpid()))  # this process is alive
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (board / "beta" / ".lock").write_text(str(dead.pid))
    edit_config(board / SWEEP / JOBS[0], {"epochs": 5})
    job1 = board / SWEEP / JOBS[1]
    edit_config(job1, {"epochs": 5, "trainer.early_stopping.patience": 1})
    last = torch.load(job1 / "last.pt", weights_only=True)
    last["state"]["stopped_early"] = True
    torch.save(last, job1 / "last.pt")
    failed = board / "delta"
    failed.mkdir()
    shutil.copy(trained_tiny[1] / "config.yaml", failed / "config.yaml")
    rows = {row["name"]: row for row in run_board(board)}
    assert rows["alpha"]["status"] == "running"
    assert rows["beta"]["status"] == "finished" and f"process {dead.pid} is not running" in rows["beta"]["notes"]
    assert rows[f"{SWEEP}/{JOBS[0]}"]["status"] == "incomplete" and rows[f"{SWEEP}/{JOBS[0]}"]["epochs"] == "3/5"
    assert rows[f"{SWEEP}/{JOBS[1]}"]["status"] == "stopped early"
    assert rows["delta"]["status"] == "failed" and rows["delta"]["epochs"] == "0/3"


@pytest.mark.parametrize("make", ["empty", "missing", "only_reports"])
def test_no_experiments_exits_1_with_a_message_and_writes_nothing(
    tmp_path: Path, make: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "experiments"
    if make != "missing":
        root.mkdir()
    if make == "only_reports":
        (root / "x" / ".hydra").mkdir(parents=True)
        (root / "x" / ".hydra" / "config.yaml").write_text("seed: 1\n")
    assert leaderboard.main(["--experiments", str(root)]) == 1
    assert str(root) in capsys.readouterr().err
    assert not (root / "leaderboard.md").exists() and not (root / "leaderboard.csv").exists()


def test_python_m_imgclf_leaderboard(board: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "imgclf.leaderboard", "--experiments", str(board)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = markdown_table(result.stdout)
    assert table[0][:3] == ["name", "model.dropout", "optimizer.lr"]
    assert sorted(row[0] for row in table[1:]) == sorted(VAL_ACC)
    assert (board / "leaderboard.md").read_text() == result.stdout.rstrip("\n") + "\n"
    empty = subprocess.run(
        [sys.executable, "-m", "imgclf.leaderboard", "--experiments", str(board / "nowhere")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert empty.returncode == 1 and "nowhere" in empty.stderr
