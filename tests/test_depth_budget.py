"""trainer.budget with a network trained whole (the scratch recipe): fewer blocks per stage when the configured
depth would get fewer than trainer.budget_min_epochs epochs, timed before any image is decoded, kept by a resumed
run, and the timing itself: a real optimizer step that leaves the run's random draws alone."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

import imgclf.tasks as tasks
from helpers import StopAfter, compose_cfg, tiny_overrides
from imgclf.errors import ConfigError
from imgclf.experiment.checkpoint import load_checkpoint
from imgclf.models.small_resnet import SmallResNet
from imgclf.tasks import depth_budget
from imgclf.training.state import Interrupted
from imgclf.training.step_cost import seconds_per_step

# the scratch recipe at the tiny folder's size: 48 train images, batches of 8 (6 steps per epoch), 18 val (3 batches)
SCRATCH = ("dataset.image_size=auto", "dataset.max_image_size=16", "tta=none", "epochs=20", "trainer.budget=1")


def scratch_cfg(tmp_path: Path, folder: Path, *extra: str) -> DictConfig:
    overrides = [o for o in tiny_overrides(tmp_path, folder) if not o.startswith(("dataset.image_size", "epochs"))]
    return compose_cfg("scratch", [*overrides, *SCRATCH, *extra])


def per_block(seconds: float, calls: list[tuple[int, int]]):
    """A stand-in for the timing: ``seconds`` per optimizer step per block of each stage."""

    def measure(trial: DictConfig, image_size: int) -> float:
        calls.append((trial.model.blocks, image_size))
        return seconds * trial.model.blocks

    return measure


def test_the_ladder_goes_down_one_block_per_stage_at_a_time_and_applies_only_with_a_least_epoch_count(
    tmp_path, tiny_folder
):
    cfg = scratch_cfg(tmp_path, tiny_folder, "model.blocks=3")
    assert depth_budget.ladder(cfg) == [3, 2, 1]
    assert cfg.trainer.budget_min_epochs is not None and depth_budget.applies(cfg)  # the recipe asks for it
    assert not depth_budget.applies(scratch_cfg(tmp_path, tiny_folder, "trainer.budget_min_epochs=null"))
    assert not depth_budget.applies(scratch_cfg(tmp_path, tiny_folder, "trainer.budget=null"))
    assert not depth_budget.applies(scratch_cfg(tmp_path, tiny_folder, "model.blocks=1"))  # nothing to step down to
    assert not depth_budget.applies(scratch_cfg(tmp_path, tiny_folder, "+model.freeze=backbone"))  # frozen_budget's


def test_a_budget_too_small_for_two_blocks_trains_one_and_every_record_says_so(
    tmp_path, tiny_folder, monkeypatch, caplog
) -> None:
    """One minute, 6 steps + 1 (a third of 3 val batches) per epoch: at 0.6 s per step per block two blocks get
    about 7 epochs (fewer than the 10 asked for), one block about 14."""
    caplog.set_level(logging.INFO)
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(depth_budget, "measurer", lambda device: per_block(0.6, calls))
    cfg = scratch_cfg(tmp_path, tiny_folder, "trainer.budget_min_epochs=10")
    tasks.train(cfg)
    assert calls == [(2, 16), (1, 16)]  # deepest first, at the size the run trains at
    assert "chose model.blocks=1 (the deeper ones get fewer than 10 epochs, trainer.budget_min_epochs)" in caplog.text
    assert "model.blocks=2: 1.20 s per step of 8, about 7 epochs" in caplog.text
    assert "model.blocks=1: 0.60 s per step of 8, about 14 epochs" in caplog.text
    saved = OmegaConf.load(tmp_path / "experiments" / "tiny" / "config.yaml")
    assert saved.model.blocks == 1
    best = load_checkpoint(tmp_path / "experiments" / "tiny" / "best.pt")
    assert best["config"]["model"]["blocks"] == 1
    assert not any(key.startswith("blocks.2.") for key in best["model"])  # 3 stages of one block: blocks.0-2 only
    assert any(key.startswith("net.blocks.2.") for key in best["model"])
    assert not any(key.startswith("net.blocks.3.") for key in best["model"])
    # test.py, composed from the recipe as the user runs it, builds the network the budget chose
    metrics = tasks.test(scratch_cfg(tmp_path, tiny_folder, "trainer.budget_min_epochs=10"))
    assert 0 <= metrics["accuracy"] <= 1


def test_a_budget_that_fits_keeps_the_configured_depth_and_times_nothing_else(tmp_path, tiny_folder, monkeypatch):
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(depth_budget, "measurer", lambda device: per_block(0.01, calls))
    cfg = scratch_cfg(tmp_path, tiny_folder, "epochs=2")  # the least asked for is at most `epochs`
    tasks.train(cfg)
    assert calls == [(2, 16)]
    assert OmegaConf.load(tmp_path / "experiments" / "tiny" / "config.yaml").model.blocks == 2


def test_when_no_depth_gets_the_epochs_the_shallowest_trains_and_the_log_says_it_gets_fewer_too(
    tmp_path, tiny_folder, monkeypatch, caplog
):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(depth_budget, "measurer", lambda device: per_block(1.0, []))
    cfg = scratch_cfg(tmp_path, tiny_folder, "trainer.budget_min_epochs=20", "model.blocks=3", "epochs=2")
    choice = depth_budget._choose  # the choice alone: a run this slow would not train within its minute
    depths = depth_budget.ladder(cfg)
    scanned = tasks.train_task.plan_data(cfg).scanned
    assert depths[choice(cfg, depths, scanned, 16, started=0.0, measure=per_block(1.0, []))] == 1
    assert "the shallowest, though it gets fewer too" in caplog.text


def test_a_resumed_run_keeps_its_checkpoints_depth_whatever_the_speed_now(tmp_path, tiny_folder, monkeypatch) -> None:
    monkeypatch.setattr(depth_budget, "measurer", lambda device: per_block(0.6, []))
    overrides = ("trainer.budget_min_epochs=10", "epochs=10")
    with pytest.raises(Interrupted):  # stopped in its second epoch
        tasks.train(scratch_cfg(tmp_path, tiny_folder, *overrides), stop_signal=lambda: StopAfter(8))
    measured: list[tuple[int, int]] = []
    monkeypatch.setattr(depth_budget, "measurer", lambda device: per_block(0.0, measured))
    again = scratch_cfg(tmp_path, tiny_folder, *overrides)
    tasks.train(again)  # a faster machine now would fit two blocks: the run goes on with its one
    assert measured == []
    assert again.model.blocks == 1
    last = load_checkpoint(tmp_path / "experiments" / "tiny" / "last.pt")
    assert last["state"]["epoch"] == 10 and last["config"]["model"]["blocks"] == 1


def test_a_least_epoch_count_that_is_no_whole_number_is_refused_by_name(tmp_path, tiny_folder) -> None:
    with pytest.raises(ConfigError, match=r"trainer.budget_min_epochs=0: expected a whole number >= 1"):
        tasks.train(scratch_cfg(tmp_path, tiny_folder, "trainer.budget_min_epochs=0"))


def test_the_timing_trains_a_real_step_and_leaves_the_random_generators_as_they_were() -> None:
    net = SmallResNet(num_classes=3, image_size=16, widths=(8, 16), blocks=1)
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    augmented: list[tuple[int, ...]] = []

    def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        assert images.dtype == torch.uint8
        augmented.append(tuple(images.shape))
        return images.flip(-1)

    state = torch.get_rng_state()
    seconds = seconds_per_step(
        net,
        optimizer,
        torch.nn.CrossEntropyLoss(),
        image_size=16,
        batch=4,
        num_classes=3,
        device=torch.device("cpu"),
        augment=augment,
    )
    assert 0 < seconds < 60
    assert augmented == [(4, 3, 16, 16)] * 3  # one warm and two timed steps, each augmented as the loader would
    assert any(not torch.equal(before[name], p) for name, p in net.named_parameters())  # the optimizer stepped
    assert torch.equal(torch.get_rng_state(), state)


def test_each_depth_is_timed_for_real_at_the_size_the_run_chooses(tmp_path, tiny_folder, caplog) -> None:
    """No stand-in: the recipe's network, optimizer, loss and batch augmentation timed at the size the run picks
    (``dataset.image_size=auto`` is still unresolved when the depth is chosen), in the precision chosen before;
    asked for more epochs than a minute holds, both depths are timed and the shallowest is chosen."""
    caplog.set_level(logging.INFO)
    cfg = scratch_cfg(tmp_path, tiny_folder, "trainer.budget_min_epochs=1000000", "epochs=1000000", "trainer.amp=bf16")
    scanned = tasks.train_task.plan_data(cfg).scanned
    cfg.dataset.image_size = "auto"  # as fit() sees it, before the size is chosen
    measure = depth_budget.measurer(torch.device("cpu"))
    depths = depth_budget.ladder(cfg)
    assert depths[depth_budget._choose(cfg, depths, scanned, 16, time.perf_counter(), measure)] == 1
    timed = re.findall(r"model.blocks=(\d): ([\d.]+) s per step of 8, about (\d+) epochs", caplog.text)
    assert [blocks for blocks, _, _ in timed] == ["2", "1"] and all(float(s) > 0 for _, s, _ in timed)
    assert cfg.model.blocks == 2 and cfg.dataset.image_size == "auto"  # the trials are copies
