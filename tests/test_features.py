"""Training features switched from the trainer section: each changes what it should."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import imgclf.tasks as tasks
from helpers import compose_cfg, tiny_overrides
from imgclf.experiment.checkpoint import load_checkpoint
from imgclf.experiment.run_log import read_metrics
from imgclf.training.engine import TrainOptions, train_one_epoch
from imgclf.training.state import Interrupted


def linear_setup(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(6, 3)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    return model, torch.optim.SGD(model.parameters(), lr=0.5), x, y


def test_accumulating_two_half_batches_equals_one_full_batch() -> None:
    full, opt_full, x, y = linear_setup()
    half, opt_half, _, _ = linear_setup()
    loss_fn = torch.nn.CrossEntropyLoss()
    train_one_epoch(full, [(x, y)], loss_fn, opt_full, device=torch.device("cpu"))
    train_one_epoch(
        half,
        [(x[:4], y[:4]), (x[4:], y[4:])],
        loss_fn,
        opt_half,
        device=torch.device("cpu"),
        options=TrainOptions(accumulate=2),
    )
    torch.testing.assert_close(full.weight, half.weight)
    torch.testing.assert_close(full.bias, half.bias)
    separate, opt_sep, _, _ = linear_setup()
    train_one_epoch(separate, [(x[:4], y[:4]), (x[4:], y[4:])], loss_fn, opt_sep, device=torch.device("cpu"))
    assert not torch.allclose(separate.weight, full.weight)  # two steps differ from one


def test_gradient_clipping_bounds_the_step() -> None:
    model, opt, x, y = linear_setup()
    before = [p.detach().clone() for p in model.parameters()]
    train_one_epoch(
        model,
        [(x * 100, y)],
        torch.nn.CrossEntropyLoss(),
        opt,
        device=torch.device("cpu"),
        options=TrainOptions(clip_grad_norm=0.01),
    )
    step = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True)))
    assert step <= 0.5 * 0.01 + 1e-6  # lr * max norm


def test_bf16_autocast_runs_on_cpu_and_keeps_float32_weights() -> None:
    seen = {}
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    model(torch.randn(1, 3, 8, 8))
    model.register_forward_hook(lambda m, i, o: seen.update(dtype=o.dtype))  # returns None: output unchanged
    opt = torch.optim.AdamW(model.parameters())
    out = train_one_epoch(
        model,
        [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))],
        torch.nn.CrossEntropyLoss(),
        opt,
        device=torch.device("cpu"),
        options=TrainOptions(amp="bf16"),
    )
    assert seen["dtype"] == torch.bfloat16 and torch.isfinite(torch.tensor(out["train/loss"]))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_early_stopping_stops_and_counts_as_finished(tmp_path: Path, tiny_folder: Path, caplog) -> None:
    caplog.set_level("INFO")
    args = tiny_overrides(
        tmp_path, tiny_folder, "epochs=6", "trainer.early_stopping.patience=2", "trainer.early_stopping.min_delta=2.0"
    )  # no later epoch can improve val/acc by 2
    tasks.train(compose_cfg("train", args))
    exp = tmp_path / "experiments" / "tiny"
    assert [r["epoch"] for r in read_metrics(exp / "metrics.jsonl")] == [1, 2, 3]
    state = load_checkpoint(exp / "last.pt")["state"]
    assert state["stopped_early"] and state["bad_epochs"] == 2 and "early stopping" in caplog.text
    tasks.train(compose_cfg("train", args))  # a finished run: nothing more is trained
    assert len(read_metrics(exp / "metrics.jsonl")) == 3 and "already finished" in caplog.text


@pytest.mark.parametrize(
    "option", ["trainer.channels_last=true", "trainer.amp=bf16", "trainer.accumulate=3", "trainer.clip_grad_norm=1.0"]
)
@pytest.mark.slow
def test_options_train_end_to_end(tmp_path: Path, tiny_folder: Path, option: str) -> None:
    best = tasks.train(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "epochs=1", option)))
    assert best is not None
    assert tasks.test(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "epochs=1", option)))["samples"] == 18


@pytest.mark.parametrize(
    "override,key",
    [
        ("trainer.amp=fp8", "trainer.amp"),
        ("trainer.accumulate=0", "trainer.accumulate"),
        ("trainer.early_stopping.patience=0", "patience"),
        ("trainer.feature_views=0", "trainer.feature_views"),
        ("tta=rotate", "tta"),
    ],
)
def test_B2_bad_trainer_values_are_rejected(override: str, key: str) -> None:
    from imgclf.errors import ConfigError
    from imgclf.tasks.config_check import check_config

    with pytest.raises(ConfigError, match=key):
        check_config(compose_cfg("train", ["experiment=x", override]))


@pytest.mark.slow
def test_compiled_model_trains_and_saves_plain_weights(tmp_path: Path, tiny_folder: Path) -> None:
    tasks.train(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "epochs=1", "trainer.compile=true")))
    keys = list(load_checkpoint(tmp_path / "experiments" / "tiny" / "best.pt")["model"])
    assert keys[:2] == ["mean", "std"] and not any("_orig_mod" in k for k in keys)


@pytest.mark.parametrize("mix", ["mixup", "cutmix", "mixup_cutmix"])
def test_batch_mix_blends_images_and_softens_labels(mix: str, tmp_path: Path, tiny_folder: Path) -> None:
    from hydra.utils import instantiate

    cfg = compose_cfg("train", ["experiment=x", f"batch_mix={mix}", "dataset.num_classes=3"])
    transform = instantiate(cfg.batch_mix)
    torch.manual_seed(0)
    images = torch.rand(8, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    mixed, soft = transform(images, labels)
    assert mixed.shape == images.shape and soft.shape == (8, 3)
    torch.testing.assert_close(soft.sum(1), torch.ones(8))
    assert not torch.equal(mixed, images) and (soft.max(1).values < 1).any()
    best = tasks.train(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "epochs=1", f"batch_mix={mix}")))
    assert best is not None


@pytest.mark.slow
def test_ema_weights_are_validated_kept_and_resumed(tmp_path: Path, tiny_folder: Path) -> None:
    from helpers import StopAfter
    from imgclf.data.cache import DecodeCache
    from imgclf.data.folder import FolderSource
    from imgclf.data.prepare import load_splits
    from imgclf.models.classifier import Classifier
    from imgclf.models.small_cnn import SmallCNN
    from imgclf.training.validation import validate

    args = tiny_overrides(tmp_path, tiny_folder, "epochs=2", "trainer.ema_decay=0.8")
    tasks.train(compose_cfg("train", args))
    exp = tmp_path / "experiments" / "tiny"
    ckpt = load_checkpoint(exp / "last.pt")
    assert ckpt["ema_steps"] == 12  # 2 epochs x 6 optimizer steps
    differs = [
        k
        for k in ckpt["model"]
        if ckpt["model"][k].is_floating_point() and not torch.equal(ckpt["model"][k], ckpt["train_model"][k])
    ]
    assert differs  # the averaged weights are not the trained ones
    model = Classifier(SmallCNN(3, width=32, dropout=0.1), ckpt["mean"], ckpt["std"])
    model.load_state_dict(ckpt["model"])
    loaded = load_splits(FolderSource(str(tiny_folder)).scan(), DecodeCache(None, "memory"), 16, names=("val",))
    from imgclf.data.dataset import make_loader

    val, _ = validate(
        model,
        make_loader(loaded["val"].dataset(16, None), batch_size=8, shuffle=False),
        torch.nn.CrossEntropyLoss(),
        device=torch.device("cpu"),
        num_classes=3,
    )
    logged = read_metrics(exp / "metrics.jsonl")[-1]
    assert val["val/acc"] == pytest.approx(logged["val/acc"]) and val["val/loss"] == pytest.approx(logged["val/loss"])

    whole = load_checkpoint(exp / "last.pt")  # resume mid-run equals the uninterrupted EMA run
    other = tiny_overrides(tmp_path / "b", tiny_folder, "epochs=2", "trainer.ema_decay=0.8")
    with pytest.raises(Interrupted):
        tasks.train(compose_cfg("train", other), stop_signal=lambda: StopAfter(8))
    tasks.train(compose_cfg("train", other))
    resumed = load_checkpoint(tmp_path / "b" / "experiments" / "tiny" / "last.pt")
    assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])
