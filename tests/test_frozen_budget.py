"""trainer.budget with a frozen, cached backbone (the transfer recipe): fewer backbones or the native size when the
configured ones would not fit, measured before any image is decoded, kept by a resumed run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

import imgclf.tasks as tasks
from helpers import StopAfter, compose_cfg, tiny_overrides
from imgclf.errors import ConfigError
from imgclf.experiment.checkpoint import load_checkpoint
from imgclf.models.efficientnet_lite import EfficientNetLite
from imgclf.tasks import frozen_budget
from imgclf.training.pass_cost import seconds_per_image
from imgclf.training.state import Interrupted

TRANSFER = ("dataset.image_size=auto", "tta=none")


def transfer_cfg(tmp_path: Path, folder: Path, *extra: str) -> DictConfig:
    return compose_cfg("transfer", tiny_overrides(tmp_path, folder, *TRANSFER, *extra))


def per_backbone(seconds: float, calls: list[tuple[tuple[str, ...], int, str]]):
    """A stand-in for the timing: ``seconds`` per image per backbone (the ensemble's cost grows with its members)."""

    def measure(trial: DictConfig, image_size: int, engine: str) -> float:
        variant = trial.model.variant
        names = (variant,) if isinstance(variant, str) else tuple(variant)
        calls.append((names, image_size, engine))
        return seconds * len(names) * (image_size / 100) ** 2

    return measure


def test_the_ladder_goes_from_the_recipe_to_its_native_size_then_one_backbone_fewer_at_a_time(tmp_path, tiny_folder):
    choices = frozen_budget.ladder(transfer_cfg(tmp_path, tiny_folder))
    assert [(c.variant, c.native_scale) for c in choices] == [
        (["lite0", "lite1", "lite2"], 1.5),
        (["lite0", "lite1", "lite2"], 1.0),
        (["lite0", "lite1"], 1.0),
        (["lite0"], 1.0),
    ]
    single = frozen_budget.ladder(transfer_cfg(tmp_path, tiny_folder, "model=lite0", "dataset.native_scale=1"))
    assert [(c.variant, c.native_scale) for c in single] == [(None, 1.0)]
    assert not frozen_budget.applies(transfer_cfg(tmp_path, tiny_folder))  # no budget: nothing is planned
    assert frozen_budget.applies(transfer_cfg(tmp_path, tiny_folder, "trainer.budget=5"))


def test_a_budget_too_small_for_three_backbones_trains_one_and_every_record_says_so(
    tmp_path, tiny_folder, monkeypatch, caplog
) -> None:
    """66 image passes (48 train + 18 val) at 0.5 s per image per backbone at 100 px: the three backbones (162 s at
    128 px) and Lite0 + Lite1 (95 s at 120 px) need more than the features' 60% of a 2-minute budget, Lite0 alone
    (41 s at 112 px) does not."""
    caplog.set_level(logging.INFO)
    calls: list[tuple[tuple[str, ...], int, str]] = []
    monkeypatch.setattr(frozen_budget, "_measurer", lambda cfg, device: per_backbone(0.5, calls))
    cfg = transfer_cfg(tmp_path, tiny_folder, "trainer.budget=2", "trainer.frozen_engine=torch")
    tasks.train(cfg)
    # 1.5x the native size is 128 px for these 24 px images, as the native size is: timed once
    assert [names for names, _, _ in calls] == [("lite0", "lite1", "lite2"), ("lite0", "lite1"), ("lite0",)]
    assert [size for _, size, _ in calls] == [128, 120, 112]  # each at the size it would run at
    assert "chose lite0 at" in caplog.text and "lite0+lite1+lite2 at" in caplog.text
    saved = OmegaConf.load(tmp_path / "experiments" / "tiny" / "config.yaml")
    assert saved.model.variant == "lite0" and saved.dataset.native_scale == 1.0
    best = load_checkpoint(tmp_path / "experiments" / "tiny" / "best.pt")
    assert best["config"]["model"]["variant"] == "lite0"
    head_inputs = [v.shape[1] for k, v in best["model"].items() if k.endswith(".head.1.weight")][0]
    assert head_inputs == 1280  # one backbone's features, not three
    # test.py, composed from the recipe as the user runs it (three backbones), builds the one the budget chose
    metrics = tasks.test(transfer_cfg(tmp_path, tiny_folder, "trainer.budget=2", "trainer.frozen_engine=torch"))
    assert 0 <= metrics["accuracy"] <= 1


def test_onnxruntime_is_timed_on_the_smallest_choice_and_scales_the_others(tmp_path, tiny_folder, monkeypatch):
    calls: list[tuple[tuple[str, ...], int, str]] = []
    monkeypatch.setattr(frozen_budget, "_measurer", lambda cfg, device: per_backbone(0.001, calls))
    cfg = transfer_cfg(tmp_path, tiny_folder, "trainer.budget=5", "trainer.frozen_engine=onnxruntime")
    tasks.train(cfg)
    engines = [engine for _, _, engine in calls]
    assert engines[0] == "onnxruntime" and calls[0][0] == ("lite0",)  # the smallest, on the engine the run uses
    assert set(engines[1:]) == {"torch"}
    assert OmegaConf.load(tmp_path / "experiments" / "tiny" / "config.yaml").model.variant == [
        "lite0",
        "lite1",
        "lite2",
    ]  # a budget it fits keeps the recipe


def test_a_budget_too_small_even_for_one_backbone_names_the_smallest_that_works(tmp_path, tiny_folder, monkeypatch):
    monkeypatch.setattr(frozen_budget, "_measurer", lambda cfg, device: per_backbone(10.0, []))
    cfg = transfer_cfg(tmp_path, tiny_folder, "trainer.budget=1", "trainer.frozen_engine=torch")
    with pytest.raises(ConfigError, match=r"trainer.budget=1 is too small .* Use trainer.budget=(\d+(\.\d)?) or more"):
        tasks.train(cfg)
    assert not (tmp_path / "experiments" / "tiny").exists()  # refused before anything was written


def test_a_resumed_run_keeps_its_checkpoints_choice_whatever_the_speed_now(tmp_path, tiny_folder, monkeypatch) -> None:
    monkeypatch.setattr(frozen_budget, "_measurer", lambda cfg, device: per_backbone(0.5, []))
    overrides = ("trainer.budget=2", "trainer.frozen_engine=torch", "epochs=3")
    with pytest.raises(Interrupted):  # stopped in its second epoch
        tasks.train(transfer_cfg(tmp_path, tiny_folder, *overrides), stop_signal=lambda: StopAfter(8))
    measured: list[tuple[tuple[str, ...], int, str]] = []
    monkeypatch.setattr(frozen_budget, "_measurer", lambda cfg, device: per_backbone(0.0, measured))
    again = transfer_cfg(tmp_path, tiny_folder, *overrides)
    tasks.train(again)  # a faster machine now would fit all three backbones: the run goes on with its one
    assert measured == []
    assert again.model.variant == "lite0"
    last = load_checkpoint(tmp_path / "experiments" / "tiny" / "last.pt")
    assert last["state"]["epoch"] == 3 and last["config"]["model"]["variant"] == "lite0"


def test_the_timing_runs_the_network_on_its_engine(tmp_path: Path) -> None:
    """seconds_per_image on onnxruntime exports the backbone into the folder given (the run reuses it)."""
    net = EfficientNetLite(num_classes=3, variant="lite0", pretrained=False, freeze="backbone")
    seconds = seconds_per_image(net, 64, engine="onnxruntime", device=torch.device("cpu"), folder=tmp_path)
    assert 0 < seconds < 60
    assert len(list(tmp_path.glob("*.onnx"))) == 1
    assert not net.training
