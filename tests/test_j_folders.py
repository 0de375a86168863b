"""RELIABILITY.md J10 and J12: folders a user's command cannot make as asked. A grid sweep whose job folder
names would pass the file system's 255 bytes, and an experiment folder that cannot be written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import read_csv, run_cli, tiny_overrides
from imgclf.tasks.resolvers import JOB_NAME_BYTES, job_subdir

# ordinary overrides, long together: their override_dirname is about 400 bytes
LONG_OVERRIDES = ["optimizer.weight_decay=0.0001234567", "trainer.clip_grad_norm=1.23456789",
                  "trainer.max_nonfinite=1234567", "trainer.dist_timeout=1234567", "loader.timeout=1234567",
                  "report.top_k=3", "report.bootstrap=1234", "report.mistakes=1234", "seed=1234",
                  "monitor=val/loss", "mode=min", "trainer.early_stopping.min_delta=0.000123456"]


def test_J10_job_subdir_is_bounded_stable_and_short_names_unchanged() -> None:
    short = "optimizer.lr=0.003"
    assert job_subdir(1, short) == "1_optimizer.lr=0.003"  # what earlier sweeps named their jobs
    long = ",".join(sorted([*LONG_OVERRIDES, "optimizer.lr=0.003"]))
    name = job_subdir(1, long)
    assert len(name.encode()) <= JOB_NAME_BYTES < 255 and "/" not in name
    assert name.startswith("1_loader.timeout=1234567,mode=min,")  # readable start
    assert job_subdir(1, long) == name  # a re-run finds the same folder
    assert job_subdir(1, long.replace("0.003", "0.001")) != name
    wide = job_subdir(0, "note=" + "é" * 200)  # multi-byte characters are not cut in half
    assert len(wide.encode()) <= JOB_NAME_BYTES and wide.encode().decode() == wide


@pytest.mark.slow
def test_J10_grid_sweep_with_long_overrides_runs_and_reruns(tmp_path: Path, tiny_folder: Path) -> None:
    sweep = tmp_path / "experiments" / "tiny" / "multirun" / "grid"  # under paths.experiments: runs/ mirrors it
    args = ["-m", *tiny_overrides(tmp_path, tiny_folder, "epochs=1"), *LONG_OVERRIDES, "optimizer.lr=0.001,0.003",
            f"hydra.sweep.dir={sweep}"]
    first = run_cli("train.py", *args, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name[:2] for p in jobs] == ["0_", "1_"]
    for job in jobs:
        assert len(job.name.encode()) <= JOB_NAME_BYTES and (job / "best.pt").is_file()
        assert (tmp_path / "runs" / job.relative_to(tmp_path / "experiments")).is_dir()  # TensorBoard: same name
        (record,) = job.glob(".hydra/train/*/overrides.yaml")
        assert set(LONG_OVERRIDES) <= set(yaml.safe_load(record.read_text()))  # the full overrides are kept
    rows = read_csv(sweep / "summary.csv")
    assert [r["status"] for r in rows] == ["COMPLETED", "COMPLETED"]
    for row, lr in zip(rows, ("0.001", "0.003")):
        assert set(LONG_OVERRIDES) | {f"optimizer.lr={lr}"} <= set(row["overrides"].split())

    again = run_cli("train.py", *args, timeout=600)  # the same sweep again: both jobs are found finished
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("already finished 1 epochs") == 2
    assert sorted(p for p in sweep.iterdir() if p.is_dir()) == jobs
