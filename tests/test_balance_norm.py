"""normalize: imagenet | auto | custom, and the class-imbalance options."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

import imgclf.tasks as tasks
from helpers import RecordingLoss, compose_cfg, make_folder, tiny_overrides
from imgclf.data.cache import decode
from imgclf.data.dataset import EpochBatchSampler
from imgclf.data.folder import FolderSource
from imgclf.data.stats import IMAGENET_MEAN, channel_stats, class_weights
from imgclf.experiment.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imb")
    make_folder(root, {"train": 24, "val": 3, "test": 3}, classes=("circle",))
    make_folder(root, {"train": 6, "val": 3, "test": 3}, classes=("square", "stripes"), seed=1)
    return root


def test_channel_stats_match_a_direct_computation(tiny_folder: Path) -> None:
    paths = [p for p, _ in FolderSource(str(tiny_folder)).scan().samples["train"]]
    pixels = np.stack([decode(p, 16) for p in paths]).astype(np.float64) / 255
    mean, std = channel_stats(None, range(len(paths)), paths, 16)
    assert mean == pytest.approx(pixels.mean(axis=(0, 1, 2)), abs=1e-5)
    assert std == pytest.approx(pixels.std(axis=(0, 1, 2)), abs=1e-5)


def test_normalize_auto_is_measured_saved_and_used(tmp_path: Path, tiny_folder: Path) -> None:
    cfg = compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "epochs=1", "dataset.normalize=auto"))
    tasks.train(cfg)
    exp = tmp_path / "experiments" / "tiny"
    saved = yaml.safe_load((exp / "config.yaml").read_text())["dataset"]
    paths = [p for p, _ in FolderSource(str(tiny_folder)).scan().samples["train"]]
    mean, std = channel_stats(None, range(len(paths)), paths, 16)
    assert saved["mean"] == pytest.approx(mean) and saved["std"] == pytest.approx(std)
    ckpt = load_checkpoint(exp / "best.pt")
    assert ckpt["mean"] == pytest.approx(mean)
    assert ckpt["model"]["mean"].flatten().tolist() == pytest.approx(mean)  # the model normalizes with them
    assert list((tmp_path / "cache").rglob("stats-16px.json"))  # remembered for this file list


def test_normalize_imagenet_overrides_the_listed_values(tmp_path: Path, tiny_folder: Path) -> None:
    cfg = compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "epochs=1", "dataset.normalize=imagenet"))
    tasks.train(cfg)
    assert load_checkpoint(tmp_path / "experiments" / "tiny" / "last.pt")["mean"] == pytest.approx(IMAGENET_MEAN)


def test_class_weights_are_inverse_frequency() -> None:
    assert class_weights([0, 0, 0, 1], 2) == pytest.approx([4 / 6, 4 / 2])
    assert class_weights([0, 1, 2], 3) == pytest.approx([1, 1, 1])


@pytest.mark.slow
def test_weighted_loss_gets_the_train_class_weights(tmp_path: Path, imbalanced: Path) -> None:
    RecordingLoss.calls.clear()
    cfg = compose_cfg(
        "train",
        tiny_overrides(
            tmp_path, imbalanced, "epochs=1", "imbalance=weighted_loss", "loss._target_=helpers.RecordingLoss"
        ),
    )
    tasks.train(cfg)
    assert RecordingLoss.calls  # every batch of training and validation went through the weighted loss
    for weight in RecordingLoss.calls:
        assert weight.tolist() == pytest.approx([36 / (3 * 24), 36 / (3 * 6), 36 / (3 * 6)])


def test_D5_weighted_sampler_balances_classes_and_stays_resumable() -> None:
    labels = [0] * 80 + [1] * 10 + [2] * 10
    weights = class_weights(labels, 3)
    sampler = EpochBatchSampler(100, 10, seed=3, weights=[weights[label] for label in labels])
    sampler.set_epoch(0)
    drawn = Counter(labels[i] for batch in sampler for i in batch)
    assert all(20 <= drawn[c] <= 46 for c in range(3))  # about a third each instead of 80/10/10
    first = list(sampler)
    sampler.set_epoch(0, start_batch=4)
    assert list(sampler) == first[4:]


def test_B2_bad_choices_are_config_errors() -> None:
    from imgclf.errors import ConfigError
    from imgclf.tasks.config_check import check_config

    for override, key in (("imbalance=sometimes", "imbalance"), ("dataset.normalize=zscore", "dataset.normalize")):
        with pytest.raises(ConfigError, match=key):
            check_config(compose_cfg("train", ["experiment=x", override]))
