"""benchmarks/gpu_check.py, the GPU check ready to run: its CPU run (--device cpu --quick) has every step and passes,
a failing or stuck step is a FAIL row and exit status 1, and every train.py run it plans composes with real keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import ROOT, compose_cfg
from imgclf.tasks.config_check import check_config

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402  benchmarks/gpu_check.py
import gpu_check_steps  # noqa: E402

STEPS = [step.name for step in gpu_check.STEPS]
CUDA_ONLY = {step.name for step in gpu_check.STEPS if step.cuda_only}


def check(*args: str, timeout: float = 1200) -> tuple[subprocess.CompletedProcess, dict[str, list[str]]]:
    """``python benchmarks/gpu_check.py args`` and its table's rows by step name (cells: status, seconds, ...)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    rows = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| ") and cells[0] in STEPS:
            rows[cells[0]] = cells[1:]
    return done, rows


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_every_train_run_of_the_check_composes_with_real_keys_and_passes_the_config_check(
    device: str, tmp_path: Path
) -> None:
    """What the GPU run will pass to train.py, composed here as train.py composes it (an unknown key fails)."""
    setup = gpu_check_steps.Setup(device, quick=device == "cpu", work=tmp_path, data=tmp_path / "photos")
    runs = gpu_check_steps.planned(setup)
    assert set(runs) == {"gc_quickstart", "gc_fp16", "gc_torchrun", "gc_transfer"}
    for experiment, (config, extra) in runs.items():
        cfg = compose_cfg(config, [*gpu_check_steps.run_overrides(setup, experiment), *extra])
        check_config(cfg)
        assert cfg.device == device and cfg.experiment == experiment
        if device == "cuda":
            assert cfg.trainer.channels_last and cfg.loader.pin_memory is True and cfg.loader.num_workers == 4
            assert cfg.trainer.amp in ("bf16", "fp16", "auto")
    quick, transfer = runs["gc_quickstart"][1], runs["gc_transfer"][1]
    if device == "cuda":
        assert "trainer.compile=true" in quick and "trainer.compile=true" in transfer
        assert "trainer.amp=auto" in quick  # train.log must say what it chose (bf16 on a GPU that has it)
        assert "trainer.amp=fp16" in runs["gc_fp16"][1] and "trainer.amp=fp16" in transfer
        assert f"dataset.root={tmp_path / 'photos'}" in transfer  # the photos given (food101_mini) on the GPU


def test_a_step_past_its_timeout_is_a_fail_row_the_run_goes_on_and_exits_1() -> None:
    done, rows = check("--device", "cpu", "--quick", "--only", "loop_ratio,nccl", "--step-timeout", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    status, seconds, _, _, details = rows["loop_ratio"]
    assert status == "FAIL" and details.startswith("timed out after 1 s") and float(seconds) < 5, rows
    assert rows["nccl"][0] == "SKIP"  # listed after it: the table goes on


@pytest.mark.slow
def test_a_failing_train_command_is_a_fail_row_with_its_error_and_exit_1() -> None:
    done, rows = check("--device", "cpu", "--quick", "--only", "quickstart,quickstart_fp16", "--set=trainer.amp=fp32")
    assert done.returncode == 1, done.stdout + done.stderr
    status, _, accuracy, _, details = rows["quickstart"]
    assert status == "FAIL" and accuracy == "" and "train.py exited 1" in details and "trainer.amp" in details, rows
    assert rows["quickstart_fp16"][0] == "SKIP"  # the table goes on after a failure


@pytest.mark.slow
def test_the_nccl_step_runs_imgclfs_ddp_loop_and_collectives_on_a_group_of_one(tmp_path: Path) -> None:
    """On the GPU the step is NCCL; its own process, asked directly, runs the same on gloo here."""
    script = str(ROOT / "benchmarks" / "gpu_check.py")
    args = ["--step", "nccl", "--device", "cpu", "--quick", "--work", str(tmp_path)]
    done = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.split(gpu_check.MARK)[-1])
    assert result["details"][0] == "gloo on CPU" and "DDP loop" in result["details"][1]
    assert 0 <= result["accuracy"] <= 1 and result["images_per_s"] > 0


@pytest.mark.slow
def test_the_quick_cpu_run_has_every_step_and_passes() -> None:
    done, rows = check("--device", "cpu", "--quick", "--budget", "1500")
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(rows) == STEPS
    for name, (status, seconds, _, images_per_s, details) in rows.items():
        if name in CUDA_ONLY:
            assert status == "SKIP" and details.startswith("needs CUDA"), rows
            continue
        assert status == "OK" and float(seconds) > 0 and float(images_per_s) > 0, rows
    assert all(0 <= float(rows[name][2]) <= 1 for name in ("quickstart", "torchrun_resume", "transfer_timm"))
    assert "resumed to epoch" in rows["torchrun_resume"][4] and "ratio imgclf/hand" in rows["loop_ratio"][4]
    assert "img/s on 1 CPU thread" in rows["augment_vs_gpu"][4]
    assert "step logs" not in done.stdout  # a run without failures leaves no temporary folder behind


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the check's GPU run (8 minutes at most)")
def test_the_gpu_check_passes_on_this_gpu() -> None:
    done, rows = check(timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(rows) == STEPS and all(cells[0] == "OK" for cells in rows.values()), done.stdout
