"""docs/reliability.md J10 and J12: folders a user's command cannot make as asked. A grid sweep whose job folder
names would pass the file system's 255 bytes, and an experiment folder that cannot be written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, copy_trained, read_csv, run_cli, tiny_overrides
from imgclf.tasks.resolvers import JOB_NAME_BYTES, job_subdir

# ordinary overrides, long together: their override_dirname is about 400 bytes
LONG_OVERRIDES = [
    "optimizer.weight_decay=0.0001234567",
    "trainer.clip_grad_norm=1.23456789",
    "trainer.max_nonfinite=1234567",
    "trainer.dist_timeout=1234567",
    "loader.timeout=1234567",
    "report.top_k=3",
    "report.bootstrap=1234",
    "report.mistakes=1234",
    "seed=1234",
    "monitor=val/loss",
    "mode=min",
    "trainer.early_stopping.min_delta=0.000123456",
]


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
    args = [
        "-m",
        *tiny_overrides(tmp_path, tiny_folder, "epochs=1"),
        *LONG_OVERRIDES,
        "optimizer.lr=0.001,0.003",
        f"hydra.sweep.dir={sweep}",
    ]
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


ReadOnly = Callable[[Path, list[str]], subprocess.CompletedProcess]
# root ignores permission bits, so as root the folder is bind-mounted read-only onto itself, in a mount namespace
# of the command's own (`unshare`): what the command sees is a read-only file system (EROFS), and nothing else does
IN_READ_ONLY_MOUNT = [
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"',
]


@pytest.fixture
def read_only() -> Iterator[ReadOnly]:
    """``run(folder, argv)``: the command ``argv`` run in ROOT with ``folder`` read-only, as a user runs it."""
    chmodded: list[Path] = []
    if os.geteuid() == 0:
        probe = subprocess.run([*IN_READ_ONLY_MOUNT, str(ROOT), "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"root ignores permission bits and cannot mount read-only here: {probe.stderr.strip()}")

    def run(folder: Path, argv: list[str]) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
        if os.geteuid() == 0:
            argv = [*IN_READ_ONLY_MOUNT, str(folder), *argv]
        else:
            folder.chmod(0o555)
            chmodded.append(folder)
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    yield run
    for folder in chmodded:
        folder.chmod(0o755)


def assert_one_message(done: subprocess.CompletedProcess, *names: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    assert "Traceback" not in output and "Unable to configure handler" not in output, output[-3000:]
    for name in names:
        assert name in output, output[-3000:]


@pytest.mark.slow
def test_J12_train_into_a_read_only_experiments_folder_says_so(tmp_path: Path, tiny_folder: Path, read_only) -> None:
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    done = read_only(experiments, [sys.executable, "train.py", *tiny_overrides(tmp_path, tiny_folder)])
    assert_one_message(done, f"cannot write to the experiment folder {experiments / 'tiny'}", "paths.experiments=")
    assert not list(experiments.iterdir())


@pytest.mark.slow
def test_J12_a_file_where_the_experiment_folder_goes_is_named(tmp_path: Path, tiny_folder: Path) -> None:
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "tiny").write_text("not a folder")  # works for every user, root included
    done = run_cli("train.py", *tiny_overrides(tmp_path, tiny_folder))
    assert_one_message(done, f"{tmp_path / 'experiments' / 'tiny'} (a file, not a folder)")


def test_J12_tasks_train_called_directly_names_a_file_in_the_way(tmp_path: Path, tiny_folder: Path) -> None:
    """The Python API (no Hydra callback before it): paths.experiments under a file is one clear error, not the
    lock's NotADirectoryError from deep inside a mkdir."""
    import imgclf.tasks as tasks
    from helpers import compose_cfg
    from imgclf.errors import ExperimentError

    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    overrides = [o for o in tiny_overrides(tmp_path, tiny_folder) if not o.startswith("paths.experiments=")]
    cfg = compose_cfg("train", [*overrides, f"paths.experiments={blocker / 'experiments'}"])
    with pytest.raises(ExperimentError, match=f"{blocker} is a file, not a folder.*paths.experiments="):
        tasks.train(cfg)
    assert blocker.read_text() == "a file"


@pytest.mark.slow
def test_J12_test_of_a_read_only_experiment_says_so(trained_tiny, tmp_path: Path, read_only) -> None:
    overrides, exp = copy_trained(trained_tiny, tmp_path)
    before = sorted(p.name for p in exp.iterdir())
    done = read_only(exp, [sys.executable, "test.py", *overrides])
    assert_one_message(done, f"cannot write to the experiment folder {exp}")
    assert sorted(p.name for p in exp.iterdir()) == before


def test_J12_export_of_a_read_only_experiment_says_so(trained_tiny, tmp_path: Path, read_only) -> None:
    _, exp = copy_trained(trained_tiny, tmp_path)
    done = read_only(exp, [shutil.which("imgclf-export") or "imgclf-export", "--checkpoint", str(exp / "best.pt")])
    assert_one_message(done, f"the folder {exp} takes no files", "--output DIR")
    assert not (exp / "export").exists()
