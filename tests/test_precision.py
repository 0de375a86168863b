"""trainer.amp=auto: the precision the run's own step is fastest in, timed before any image is decoded (bf16 on a
CPU only when it is clearly faster), bf16 or fp16 on CUDA, full precision for a frozen backbone; written into every
record and kept by a resumed run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

import imgclf.tasks as tasks
from helpers import StopAfter, compose_cfg, tiny_overrides
from imgclf.errors import ConfigError
from imgclf.experiment.checkpoint import load_checkpoint
from imgclf.tasks import precision
from imgclf.tasks.lr_find_task import lr_find
from imgclf.tasks.step_timing import measurer
from imgclf.training.device import autocast
from imgclf.training.distributed import Distributed
from imgclf.training.state import Interrupted

CPU = torch.device("cpu")


def auto_cfg(tmp_path: Path, folder: Path, *extra: str) -> DictConfig:
    return compose_cfg(
        "scratch", [*tiny_overrides(tmp_path, folder), "trainer.budget=null", "trainer.amp=auto", *extra]
    )


def timings(full: float, half: float, calls: list[str]):
    """A stand-in for the timing: ``full`` seconds per step in float32, ``half`` in bf16."""

    def measure(trial: DictConfig, image_size: int) -> float:
        calls.append(trial.trainer.amp)
        return half if trial.trainer.amp == "bf16" else full

    return measure


@pytest.mark.parametrize(("half", "chosen"), [(0.05, "bf16"), (0.09, "none"), (0.2, "none")])
def test_a_cpu_keeps_bf16_only_when_its_step_is_clearly_faster(tmp_path, tiny_folder, caplog, half, chosen) -> None:
    caplog.set_level(logging.INFO)
    cfg = auto_cfg(tmp_path, tiny_folder)
    calls: list[str] = []
    precision.fit(cfg, None, [], device=CPU, group=Distributed(), measure=timings(0.1, half, calls))
    assert calls == ["none", "bf16"]  # each timed once, on copies of the config
    assert cfg.trainer.amp == chosen
    assert f"trainer.amp=auto: {chosen} (one step of 8 at 16 px: float32 0.100 s, bf16 {half:.3f} s" in caplog.text


def test_the_choice_is_in_the_saved_config_and_checkpoint_and_a_resumed_run_keeps_it(
    tmp_path, tiny_folder, monkeypatch
) -> None:
    monkeypatch.setattr(precision, "measurer", lambda device: timings(0.1, 0.05, []))
    with pytest.raises(Interrupted):  # stopped in its second epoch
        tasks.train(auto_cfg(tmp_path, tiny_folder), stop_signal=lambda: StopAfter(8))
    exp = tmp_path / "experiments" / "tiny"
    assert "amp: bf16" in (exp / "config.yaml").read_text()
    assert load_checkpoint(exp / "last.pt")["config"]["trainer"]["amp"] == "bf16"
    measured: list[str] = []
    monkeypatch.setattr(precision, "measurer", lambda device: timings(0.1, 0.5, measured))
    again = auto_cfg(tmp_path, tiny_folder)
    tasks.train(again)  # bf16 would lose now: the run goes on in the precision it started in
    assert measured == [] and again.trainer.amp == "bf16"
    assert load_checkpoint(exp / "last.pt")["config"]["trainer"]["amp"] == "bf16"


def test_a_frozen_backbone_trains_in_full_precision_without_timing(tmp_path, tiny_folder, caplog) -> None:
    caplog.set_level(logging.INFO)
    cfg = auto_cfg(tmp_path, tiny_folder, "+model.freeze=backbone")
    calls: list[str] = []
    precision.fit(cfg, None, [], device=CPU, group=Distributed(), measure=timings(0.1, 0.01, calls))
    assert calls == [] and cfg.trainer.amp == "none"
    assert "a frozen backbone" in caplog.text


@pytest.mark.parametrize(("bf16", "chosen"), [(True, "bf16"), (False, "fp16")])
def test_cuda_takes_bf16_where_the_gpu_has_it_and_fp16_otherwise(tmp_path, tiny_folder, monkeypatch, bf16, chosen):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    cfg = auto_cfg(tmp_path, tiny_folder)
    precision.fit(cfg, None, [], device=torch.device("cuda"), group=Distributed(), measure=timings(1, 1, []))
    assert cfg.trainer.amp == chosen


def test_explicit_precisions_are_left_alone_and_a_wrong_one_is_refused_by_name(tmp_path, tiny_folder) -> None:
    cfg = auto_cfg(tmp_path, tiny_folder, "trainer.amp=none")
    precision.fit(cfg, None, [], device=CPU, group=Distributed(), measure=timings(0.1, 0.01, []))
    assert cfg.trainer.amp == "none"
    with pytest.raises(ConfigError, match=r"trainer.amp='fast': expected one of none, bf16, fp16, auto"):
        tasks.train(auto_cfg(tmp_path, tiny_folder, "trainer.amp=fast"))
    with pytest.raises(ValueError, match="auto is resolved by tasks.precision.fit"):
        autocast(CPU, "auto")


def test_both_precisions_are_timed_for_real_on_the_runs_step(tmp_path, tiny_folder) -> None:
    """No stand-in: the recipe's network, optimizer, loss and batch augmentation in float32 and under bf16
    autocast; the run's config keeps ``auto`` until the choice is written."""
    cfg = auto_cfg(tmp_path, tiny_folder)
    tasks.train_task.plan_data(cfg)  # the class count, as train() fills it before the choice
    measure = measurer(CPU)
    seen: list[tuple[str, float]] = []

    def recorded(trial: DictConfig, image_size: int) -> float:
        seconds = measure(trial, image_size)
        seen.append((trial.trainer.amp, seconds))
        assert cfg.trainer.amp == "auto"
        return seconds

    precision.fit(cfg, None, [], device=CPU, group=Distributed(), measure=recorded)
    assert [amp for amp, _ in seen] == ["none", "bf16"] and all(s > 0 for _, s in seen)
    assert cfg.trainer.amp in ("none", "bf16")


def test_lr_find_resolves_auto_before_its_sweep(tmp_path, tiny_folder, monkeypatch) -> None:
    monkeypatch.setattr(precision, "measurer", lambda device: timings(0.1, 0.05, []))
    cfg = auto_cfg(tmp_path, tiny_folder, "lr_find.steps=6")
    lr_find(cfg)
    assert cfg.trainer.amp == "bf16"
