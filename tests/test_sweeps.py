"""Plain grid sweeps (Hydra's basic sweeper): the same command with the same hydra.sweep.dir picks up where
an earlier run stopped, because every job's folder is ``<num>_<override_dirname>`` and resume=auto
returns at once for a finished experiment and continues an unfinished one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, read_csv, run_cli, tiny_overrides


def files_of(job: Path) -> dict[str, int]:
    """mtime (ns) of the job's results; train.log and the .hydra records gain a few lines at every start."""
    return {
        str(p.relative_to(job)): p.stat().st_mtime_ns
        for p in job.rglob("*")
        if p.is_file() and ".hydra" not in p.parts and p.name != "train.log"
    }


@pytest.mark.slow
def test_grid_sweep_rerun_skips_finished_jobs_and_resumes_an_interrupted_one(tmp_path: Path, tiny_folder: Path) -> None:
    sweep = tmp_path / "grid"
    args = [
        *(a for a in tiny_overrides(tmp_path, tiny_folder) if not a.startswith("epochs=")),
        "epochs=5",
        "optimizer.lr=0.001,0.003",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "-m", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list(sweep.glob("1_*/last.pt")):  # written after each epoch
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # job 0 finished, job 1 in its second epoch
    proc.wait(timeout=60)
    (done,), (cut,) = sweep.glob("0_*"), sweep.glob("1_*")
    assert cut.name.endswith("optimizer.lr=0.003")
    finished = files_of(done)
    assert len((done / "metrics.jsonl").read_text().splitlines()) == 5

    again = run_cli("train.py", "-m", *args, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    output = again.stdout + again.stderr
    assert "already finished 5 epochs" in output and "nothing to do" in output
    assert files_of(done) == finished  # not trained again, nothing rewritten
    assert "resuming tiny from epoch" in output
    epochs = [json.loads(line)["epoch"] for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5]  # continued, not started over
    assert [r["status"] for r in read_csv(sweep / "summary.csv")] == ["COMPLETED", "COMPLETED"]
