"""imgclf-lr-find (issue 30): the learning-rate range test through the real training loop. The rate follows the
exponential schedule in every parameter group, a too-high rate diverges and stops the sweep, the model, optimizer
and random generators are bit-identical afterwards, nothing but the plot and table is written, and the suggestion
is printed as the override to paste."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers import ROOT, compose_cfg, options, read_csv, tiny_overrides
from imgclf.data.dataset import make_loader
from imgclf.errors import ConfigError
from imgclf.models.efficientnet_lite import EfficientNetLite
from imgclf.tasks.lr_find_task import lr_find
from imgclf.training.engine import TrainOptions
from imgclf.training.lr_range import Curve, Sweep, range_test, suggest

SWEEP = ["lr_find.start=1e-4", "lr_find.end=10", "lr_find.steps=24", "lr_find.smooth=0.8"]


class CountingLoss(nn.CrossEntropyLoss):
    """Counts its calls (``loss._target_=test_lr_find.CountingLoss``): one per batch the loop trains on."""

    calls = 0

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        CountingLoss.calls += 1
        return super().forward(logits, labels)


class Batches(torch.utils.data.Dataset):
    """Fixed random images and labels that a small network can fit."""

    def __init__(self, n: int = 32) -> None:
        generator = torch.Generator().manual_seed(0)
        self.labels = torch.arange(n) % 3
        self.images = torch.randn(n, 3, 8, 8, generator=generator) + self.labels.view(-1, 1, 1, 1).float()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.2), nn.Linear(144, 3)
    )


def _same(a: object, b: object) -> bool:
    """Equal to the bit: tensors (values and dtype), and dicts, lists and plain values holding them."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _clone(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clone(v) for v in value]
    return value


@pytest.mark.parametrize("amp, accumulate", [("none", 1), ("bf16", 2)])
def test_range_test_restores_the_model_optimizer_and_generators_bit_for_bit(amp: str, accumulate: int) -> None:
    """A model with optimizer state from a real step (Adam moments, a step count), two parameter groups, BatchNorm
    statistics and dropout: after a sweep that trained it to divergence, all of it is as before, and so are the
    random generators (the next draws are the same) and the training mode."""
    net = _net()
    optimizer = torch.optim.AdamW([{"params": net[0].parameters(), "lr": 1e-3}, {"params": net[5].parameters()}])
    loader = make_loader(Batches(), batch_size=8, shuffle=True, seed=0)
    nn.functional.cross_entropy(net(Batches().images[:8]), Batches().labels[:8]).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    net.eval()
    weights, state = _clone(net.state_dict()), _clone(optimizer.state_dict())
    draws = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())

    curve = range_test(
        net,
        loader,
        nn.CrossEntropyLoss(),
        optimizer,
        device=torch.device("cpu"),
        options=TrainOptions(amp=amp, accumulate=accumulate, clip_grad_norm=1.0),
        sweep=Sweep(start=1e-3, end=1e3, steps=30),
    )

    assert len(curve.lrs) >= 5  # it did train
    assert _same(net.state_dict(), weights)
    assert _same(optimizer.state_dict(), state)
    assert not net.training and all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), draws[0]) and random.getstate() == draws[1]
    assert (np.random.get_state()[1] == draws[2]).all()


def test_every_group_follows_the_exponential_schedule_at_its_own_ratio() -> None:
    """The rates the optimizer steps with, read in its step: group 0 at start * (end/start)^(i/(steps-1)), the
    other group at a tenth of it (a backbone at backbone_lr_scale 0.1); one step per trainer.accumulate batches."""
    net = _net()
    optimizer = torch.optim.SGD(
        [{"params": net[5].parameters(), "lr": 0.5}, {"params": net[0].parameters(), "lr": 0.05}]
    )
    stepped: list[list[float]] = []
    original = optimizer.step
    optimizer.step = lambda *a, **k: (stepped.append([g["lr"] for g in optimizer.param_groups]), original(*a, **k))[1]
    CountingLoss.calls = 0
    sweep = Sweep(start=1e-5, end=1e-2, steps=12)

    curve = range_test(
        net,
        make_loader(Batches(), batch_size=8, shuffle=True, seed=0),  # 4 batches: the sweep reads 6 epochs
        CountingLoss(),
        optimizer,
        device=torch.device("cpu"),
        options=TrainOptions(accumulate=2),
        sweep=sweep,
    )

    assert not curve.diverged and len(stepped) == 12 and CountingLoss.calls == 24
    for i, (head, backbone) in enumerate(stepped):
        assert head == pytest.approx(1e-5 * 1000 ** (i / 11), rel=1e-9)
        assert backbone == pytest.approx(head / 10, rel=1e-9)
    assert curve.lrs == [h for h, _ in stepped]
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.05]  # restored


def test_suggestions_valley_steepest_and_minimum_and_none_for_a_flat_curve() -> None:
    """A made-up curve, flat at 2, falling fastest at lr 1e-2 down to its lowest point at lr 1e-1, then blowing up:
    the steepest fall is at 1e-2, the valley halfway (in steps) along the longest fall from the end of the flat
    part (1e-5) to the lowest point, a tenth of the lowest point is 1e-2. A flat curve, or one too short to read,
    gives none with the reason."""
    lrs = [10 ** (-7 + 8 * i / 80) for i in range(81)]  # ten steps per decade, 1e-7 to 10

    def loss(lr: float) -> float:
        x = math.log10(lr)
        if x <= -5:
            return 2.0
        if x <= -1:
            return 1.5 - 0.5 * math.tanh(2 * (x + 2))  # from 2 at 1e-5 to its lowest at 1e-1
        return 1.5 - 0.5 * math.tanh(2) + 50 * (x + 1) ** 2

    curve = [loss(lr) for lr in lrs]
    found = suggest(Curve(lrs, curve, curve))
    assert found.steepest == pytest.approx(1e-2, rel=0.3)
    assert found.minimum == pytest.approx(1e-2, rel=0.3)
    assert 10**-3.5 < found.lr < 10**-2.5  # about halfway from 1e-5 to 1e-1 on the log axis (fastai rounds down)

    flat = [2.0 + 0.01 * math.sin(i) for i in range(60)]
    none = suggest(Curve(lrs[:60], flat, flat))
    assert none.lr is None and none.steepest is None and "never fell" in none.reason
    short = suggest(Curve(lrs[:2], curve[:2], curve[:2]))
    assert short.lr is None and "too few" in short.reason


def test_lr_find_writes_the_plot_and_table_and_no_checkpoint(tmp_path: Path, tiny_folder: Path) -> None:
    """Through lr_find(cfg) on the tiny folder: the csv's lr column is the exponential schedule from lr_find.start,
    each smoothed value is the bias-corrected moving average of the losses; the experiment folder holds the plot
    and the table only beside what it held (left as it was), and TensorBoard gets its own run."""
    exp = tmp_path / "experiments" / "tiny"
    exp.mkdir(parents=True)
    (exp / "last.pt").write_bytes(b"a run's checkpoint")  # never read: lr_find resumes nothing
    found = lr_find(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, *SWEEP)))

    rows = read_csv(exp / "lr_find.csv")
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(1e-4) and len(rows) == len(found.curve.lrs) <= 24
    for i, lr in enumerate(lrs):
        assert lr == pytest.approx(1e-4 * 1e5 ** (i / 23), rel=1e-8)
    losses = [float(r["loss"]) for r in rows]
    average = 0.0
    for i, (loss, row) in enumerate(zip(losses, rows, strict=True)):
        average = 0.8 * average + 0.2 * loss
        if math.isfinite(average):
            assert float(row["smoothed"]) == pytest.approx(average / (1 - 0.8 ** (i + 1)), rel=1e-4)
    assert sorted(p.name for p in exp.iterdir()) == ["last.pt", "lr_find.csv", "lr_find.png"]
    assert (exp / "last.pt").read_bytes() == b"a run's checkpoint"
    assert found.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "runs" / "tiny" / "lr_find").glob("events.out.tfevents.*"))


def test_a_too_high_rate_diverges_and_stops_early(tmp_path: Path, tiny_folder: Path) -> None:
    """From lr 1 up to 1e6 with SGD the loss explodes within a few steps: the sweep stops there (diverged), far
    before its 60 steps, and suggests nothing from a curve that never fell."""
    sweep = ["lr_find.start=1", "lr_find.end=1e6", "lr_find.steps=60", "optimizer=sgd"]
    found = lr_find(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, *sweep)))
    assert found.curve.diverged and len(found.curve.lrs) < 30
    assert found.suggestion.lr is None and found.override() is None


@pytest.mark.parametrize("optimizer", options("optimizer"))
def test_every_optimizer_option_sweeps(tmp_path: Path, tiny_folder: Path, optimizer: str) -> None:
    found = lr_find(
        compose_cfg(
            "train", tiny_overrides(tmp_path, tiny_folder, f"optimizer={optimizer}", *SWEEP[:2], "lr_find.steps=6")
        )
    )
    assert len(found.curve.lrs) == 6 or found.curve.diverged
    assert all(math.isfinite(loss) for loss in found.curve.losses[:3])


def test_bf16_accumulation_and_clipping_take_real_steps(tmp_path: Path, tiny_folder: Path) -> None:
    """trainer.amp=bf16 on the CPU with trainer.accumulate=2 and clipping: two batches through the config's loss
    for every recorded step, with MixUp on top."""
    CountingLoss.calls = 0
    extra = ["trainer.amp=bf16", "trainer.accumulate=2", "trainer.clip_grad_norm=1.0", "batch_mix=mixup"]
    extra += ["loss._target_=test_lr_find.CountingLoss", "lr_find.start=1e-4", "lr_find.end=1e-2", "lr_find.steps=4"]
    found = lr_find(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, *extra)))
    assert len(found.curve.lrs) == 4 and CountingLoss.calls == 8


class CountingLite(EfficientNetLite):
    """Counts the forward passes of its backbone (``model._target_=test_lr_find.CountingLite``)."""

    backbone_calls = 0

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.backbone.register_forward_hook(lambda *_: CountingLite.count())

    @staticmethod
    def count() -> None:
        CountingLite.backbone_calls += 1


@pytest.mark.slow
def test_cached_features_sweep_the_head(tmp_path: Path, tiny_folder: Path) -> None:
    """The transfer recipe's frozen backbone with trainer.cache_features=true (a Lite0 from scratch, at 32 px): the
    sweep trains the head on the cached features, so the backbone runs only to compute them (the 48 train and 18
    val images in batches of 8, and the model check on two blank images), never during the sweep's steps. The torch
    engine is pinned: the hook counts torch passes, and trainer.frozen_engine=auto computes the features on
    onnxruntime (tests/test_onnx_twin.py)."""
    extra = ["model=lite0", "model._target_=test_lr_find.CountingLite", "model.pretrained=false"]
    extra += ["model.freeze=backbone", "dataset.image_size=32", "trainer.cache_features=true"]
    extra += ["trainer.frozen_engine=torch"]
    extra += ["loss._target_=test_lr_find.CountingLoss", *SWEEP]
    CountingLoss.calls = CountingLite.backbone_calls = 0
    found = lr_find(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, *extra)))
    assert len(found.curve.lrs) > 5 and CountingLoss.calls == len(found.curve.lrs)
    assert CountingLite.backbone_calls == 1 + 6 + 3
    assert (tmp_path / "experiments" / "tiny" / "lr_find.png").is_file()


@pytest.mark.parametrize(
    "override, key",
    [("lr_find.end=1e-8", "lr_find.end"), ("lr_find.steps=1", "lr_find.steps"), ("lr_find.start=0", "lr_find.start")],
)
def test_bad_keys_are_refused_by_name(tmp_path: Path, tiny_folder: Path, override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        lr_find(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, override)))
    assert not (tmp_path / "experiments").exists()


@pytest.mark.slow
def test_the_command_prints_the_override_to_paste(tmp_path: Path, tiny_folder: Path) -> None:
    """imgclf-lr-find as a user runs it: the last lines are the suggestion and `optimizer.lr=<value>`, a value
    Hydra takes back as an override."""
    args = [*tiny_overrides(tmp_path, tiny_folder, *SWEEP)]
    result = subprocess.run(
        [sys.executable, "-m", "imgclf.cli.lr_find", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    pasted = [line for line in result.stdout.splitlines() if line.startswith("optimizer.lr=")]
    assert len(pasted) == 1, result.stdout
    cfg = compose_cfg("train", [pasted[0]])
    assert 1e-4 <= cfg.optimizer.lr <= 10
