"""One experiment on several processes (torchrun, gloo on this CPU): the same weights as one process with the
whole batch, one writer of the experiment folder, agreed stops, resume, and two "machines" on 127.0.0.1
(docs/reliability.md H1-H4)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import imgclf.tasks as tasks
from helpers import ROOT, compose_cfg, make_folder, run_cli, tiny_overrides
from imgclf.data.dataset import EpochBatchSampler
from imgclf.experiment.checkpoint import load_checkpoint

# no BatchNorm and no dropout: two ranks with half batches compute exactly the whole batch's mean gradient
EXACT = (
    "model=tinyvgg",
    "model.width=8",
    "augmentation=none",
    "dataset.image_size=16",
    "loader.cache=memory",
    "scheduler=none",
    "optimizer=sgd",
    "optimizer.lr=0.05",
    "dataset.test_fraction=0",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(
    *args: str, nproc: int = 2, extra: tuple[str, ...] = (), env: dict[str, str] | None = None, wait: bool = True
) -> subprocess.CompletedProcess | subprocess.Popen:
    """``torchrun --nproc_per_node=N train.py args`` on 127.0.0.1, as a user runs it; on the CPU (gloo) also on a
    machine with one GPU, which cannot hold two ranks."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *extra]
    if not extra:
        command += ["--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    command += [str(ROOT / "train.py"), "device=cpu", *args]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    if not wait:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)


def from_our_code(output: str) -> bool:
    """Whether ``output`` holds a traceback through imgclf's code (torchrun prints its own when a rank exits
    non-zero: that one names only torch's files)."""
    return f'File "{ROOT}' in output


@pytest.fixture(scope="module")
def uneven_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """53 train images: with a global batch of 8 the last batch has 5 (3 on rank 0, 2 on rank 1)."""
    root = make_folder(tmp_path_factory.mktemp("ddp"), {"train": 18, "val": 3})
    next((root / "train" / "circle").glob("*.png")).unlink()
    return root


def test_global_batches_are_split_between_ranks_without_overlap() -> None:
    whole = EpochBatchSampler(53, 8, shuffle=True, seed=3)
    ranks = [EpochBatchSampler(53, 4, shuffle=True, seed=3, world_size=2, rank=r) for r in (0, 1)]
    for sampler in (whole, *ranks):
        sampler.set_epoch(2)
    assert len(ranks[0]) == len(ranks[1]) == len(whole) == 7
    for batch, first, second in zip(whole, *ranks, strict=True):
        assert first + second == batch  # rank 0 the front of each global batch, rank 1 the rest
    assert [len(b) for b in ranks[0]][-1] == 3 and [len(b) for b in ranks[1]][-1] == 2
    val = [EpochBatchSampler(11, 4, shuffle=False, world_size=2, rank=r) for r in (0, 1)]
    assert [i for s in val for b in s for i in b] == list(range(11))  # every val image once, in order


@pytest.mark.slow
def test_H3_two_processes_train_one_experiment_like_one_process_with_the_whole_batch(
    tmp_path: Path, uneven_folder: Path
) -> None:
    single = tiny_overrides(tmp_path / "one", uneven_folder, *EXACT, "loader.batch_size=8", "epochs=2")
    tasks.train(compose_cfg("train", single))
    ddp = tiny_overrides(tmp_path / "two", uneven_folder, *EXACT, "loader.batch_size=4", "epochs=2")
    done = torchrun(*ddp)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    one, two = (load_checkpoint(tmp_path / run / "experiments" / "tiny" / "last.pt") for run in ("one", "two"))
    for name, weight in one["model"].items():
        torch.testing.assert_close(two["model"][name], weight, atol=1e-6, rtol=1e-5, msg=name)
    exp = tmp_path / "two" / "experiments" / "tiny"
    lines = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]  # one writer: one line per epoch
    first = [
        json.loads(line)
        for line in (tmp_path / "one" / "experiments" / "tiny" / "metrics.jsonl").read_text().splitlines()
    ]
    for key in ("val/acc", "val/loss", "train/loss", "train/acc"):  # reduced over the ranks: the whole split's
        assert lines[-1][key] == pytest.approx(first[-1][key], abs=1e-5), key
    assert lines[-1]["world_size"] == 2 and lines[-1]["global_batch_size"] == 8
    assert len(list((exp / ".hydra" / "train").iterdir())) == 1  # one record of the command, not one per rank
    assert sorted(p.name for p in (tmp_path / "two" / "runs" / "tiny").iterdir() if p.name.startswith("events"))[:1]
    assert len(list((tmp_path / "two" / "runs" / "tiny").glob("events*"))) == 1


@pytest.mark.slow
def test_H2_sigterm_to_the_launcher_stops_every_rank_at_one_step_and_the_same_command_resumes(
    tmp_path: Path, uneven_folder: Path
) -> None:
    overrides = tiny_overrides(tmp_path, uneven_folder, *EXACT, "loader.batch_size=4", "epochs=40", "progress=false")
    proc = torchrun(*overrides, wait=False)
    exp = tmp_path / "experiments" / "tiny"
    deadline = time.monotonic() + 120
    while not (exp / "metrics.jsonl").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()
    os.kill(proc.pid, signal.SIGTERM)  # torchrun passes it on to both ranks
    out, _ = proc.communicate(timeout=120)
    saved = load_checkpoint(exp / "last.pt")["state"]
    assert 0 < saved["epoch"] < 40, out[-3000:]
    assert out.count("stopped in epoch") == 1, out[-3000:]  # one message, one last.pt: rank 0's
    assert not from_our_code(out)  # torchrun itself re-raises the signal as its own SignalException traceback
    done = torchrun(*overrides[:-2], "epochs=" + str(saved["epoch"] + 1))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert load_checkpoint(exp / "last.pt")["state"]["epoch"] == saved["epoch"] + 1


@pytest.mark.slow
def test_H1_a_rank_killed_ends_the_others_and_last_pt_resumes(tmp_path: Path, uneven_folder: Path) -> None:
    overrides = tiny_overrides(tmp_path, uneven_folder, *EXACT, "loader.batch_size=4", "epochs=40")
    proc = torchrun(*overrides, wait=False)
    exp = tmp_path / "experiments" / "tiny"
    deadline = time.monotonic() + 120
    while not (exp / "last.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    ranks = subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "train.py"], capture_output=True, text=True)
    child = int(ranks.stdout.split()[-1])
    os.kill(child, signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "train.py FAILED" in out, out[-3000:]
    epoch = load_checkpoint(exp / "last.pt")["state"]["epoch"]
    done = torchrun(*overrides[:-1], f"epochs={epoch + 1}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert load_checkpoint(exp / "last.pt")["state"]["epoch"] == epoch + 1


@pytest.mark.slow
def test_H4_resuming_mid_epoch_with_another_world_size_is_refused(tmp_path: Path, uneven_folder: Path) -> None:
    overrides = tiny_overrides(tmp_path, uneven_folder, *EXACT, "loader.batch_size=4", "epochs=2")
    from helpers import StopAfter
    from imgclf.training.state import Interrupted

    with pytest.raises(Interrupted):
        tasks.train(compose_cfg("train", overrides), stop_signal=lambda: StopAfter(3))
    done = torchrun(*overrides)
    assert done.returncode == 1, done.stdout[-3000:]
    said = done.stdout + done.stderr
    assert "with world size 2: run it again with 1 process(es)" in said and not from_our_code(said)


@pytest.mark.slow
def test_two_machines_on_127_0_0_1_train_one_experiment(tmp_path: Path, uneven_folder: Path) -> None:
    overrides = tiny_overrides(tmp_path, uneven_folder, *EXACT, "loader.batch_size=4", "epochs=1")
    rendezvous = ("--nnodes=2", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{free_port()}", "--rdzv_id=imgclf")
    nodes = [torchrun(*overrides, nproc=1, extra=rendezvous, wait=False) for _ in range(2)]
    outs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    exp = tmp_path / "experiments" / "tiny"
    line = json.loads((exp / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["world_size"] == 2 and load_checkpoint(exp / "last.pt")["state"]["epoch"] == 1


@pytest.mark.slow
def test_slurm_launcher_runs_one_job_as_a_group_of_tasks_with_the_same_settings(
    tmp_path: Path, uneven_folder: Path
) -> None:
    # hydra/launcher=slurm's local stand-in (submitit's local executor): one job of 2 tasks is one DDP group
    overrides = tiny_overrides(tmp_path, uneven_folder, *EXACT, "loader.batch_size=4", "epochs=2")
    done = run_cli(
        "train.py",
        "-m",
        "hydra/launcher=slurm_local",
        "hydra.launcher.tasks_per_node=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *overrides,
        "optimizer.lr=0.05,0.02",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jobs = sorted((tmp_path / "sweep").glob("[0-9]_*"))
    assert len(jobs) == 2  # two settings, each one experiment trained by both tasks
    for job, lr in zip(jobs, (0.05, 0.02), strict=True):
        lines = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
        assert [(line["epoch"], line["world_size"], line["lr"]) for line in lines] == [(1, 2, lr), (2, 2, lr)]
        assert (job / "train.rank1.log").exists() and len(list((job / ".hydra" / "train").iterdir())) == 1


def test_sync_bn_on_the_cpu_is_refused_before_any_data_is_read(tmp_path: Path, uneven_folder: Path) -> None:
    from imgclf.errors import ConfigError

    overrides = tiny_overrides(tmp_path, uneven_folder, "trainer.sync_bn=true", "device=cpu")
    with pytest.raises(ConfigError, match="trainer.sync_bn=true needs CUDA GPUs"):
        tasks.train(compose_cfg("train", overrides))
    assert not (tmp_path / "experiments").exists() and not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_ranks_follow_one_budget_plan_and_end_together(tmp_path: Path, uneven_folder: Path) -> None:
    overrides = tiny_overrides(tmp_path, uneven_folder, *EXACT, "loader.batch_size=4", "epochs=100000")
    # a rank on its own plan would hang in a collective (or time out); the budget counts from each process's start,
    # which took 20 s of an 18-s budget on 2 loaded cores: 45 s leave room for a slow start and still stop the run
    done = torchrun(*overrides, "trainer.budget=0.75", "scheduler=cosine")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    exp = tmp_path / "experiments" / "tiny"
    payload = load_checkpoint(exp / "last.pt")
    lines = (exp / "metrics.jsonl").read_text().splitlines()
    assert payload["state"]["budget"]["epochs"] == len(lines) == payload["state"]["epoch"] < 100000
    assert payload["scheduler"]["progress"] == pytest.approx(1.0)
    assert "budget 0.75 min: plan" in done.stdout + done.stderr
