"""Checkpoints keep working: one written by the code before the package redesign, and one of every
model option in conf/model/, load in test.py and predict.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import imgclf.tasks as tasks
from helpers import ROOT, compose_cfg, make_folder, options, run_cli, tiny_overrides
from imgclf.experiment.checkpoint import load_checkpoint, save_atomic
from imgclf.inference import MODELS, Predictor
from imgclf.models.classifier import Classifier
from imgclf.models.small_cnn import SmallCNN

# written by commit 07291bf (before imgclf was regrouped into packages): SmallCNN(width=4) on 16 px
# images of the three test classes, trained one epoch with augmentation=flip and calibrate=true
OLD_CHECKPOINT = ROOT / "tests" / "fixtures" / "v1_small_cnn.pt"


def expected_probabilities(images: torch.Tensor) -> torch.Tensor:
    """The old checkpoint's probabilities computed by hand from its tensors: normalize, SmallCNN, temperature."""
    payload = load_checkpoint(OLD_CHECKPOINT)
    net = SmallCNN(3, width=4, dropout=0.1)
    net.load_state_dict({k.removeprefix("net."): v for k, v in payload["model"].items() if k.startswith("net.")})
    mean, std = (torch.tensor(payload[key]).view(1, 3, 1, 1) for key in ("mean", "std"))
    with torch.no_grad():
        logits = net.eval()((images.float() / 255 - mean) / std)
    return torch.softmax(logits / payload["temperature"], 1)


def test_a_checkpoint_from_before_the_redesign_predicts_as_it_did(tmp_path: Path) -> None:
    predictor = Predictor.load(OLD_CHECKPOINT, device="cpu")
    assert predictor.classes == ["circle", "square", "stripes"] and predictor.image_size == 16
    assert predictor.temperature == pytest.approx(0.4930456, rel=1e-6)
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(predictor.probabilities(list(images)), expected_probabilities(images))
    folder = make_folder(tmp_path / "data", {"test": 2})
    done = run_cli(
        "predict.py",
        str(folder),
        "--checkpoint",
        str(OLD_CHECKPOINT),
        "--device",
        "cpu",
        "--output",
        str(tmp_path / "p.csv"),
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "p.csv").read_text().count("\n") == 1 + 6  # header and the 6 images


@pytest.mark.slow
def test_G2_a_checkpoint_from_before_the_redesign_is_evaluated_by_test_py(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "data", {"train": 4, "val": 2, "test": 3})
    overrides = tiny_overrides(tmp_path, folder, "model.width=4", f"ckpt={OLD_CHECKPOINT}")
    metrics = tasks.test(compose_cfg("train", overrides))
    assert metrics["samples"] == 9 and metrics["checkpoint"] == str(OLD_CHECKPOINT)
    assert metrics["temperature"] == pytest.approx(0.4930456, rel=1e-6)
    # not the experiment's best.pt, so its report has a folder of its own (docs/reliability.md G2)
    written = tmp_path / "experiments" / "tiny" / "test_data_ckpt-fixtures-v1_small_cnn" / "metrics.json"
    assert not (tmp_path / "experiments" / "tiny" / "test_data").exists()
    written.unlink()
    done = run_cli("test.py", *overrides, "report.bootstrap=0")
    assert done.returncode == 0, done.stderr
    assert json.loads(written.read_text())["samples"] == 9


@pytest.mark.parametrize("option", options("model"))
def test_every_model_option_is_one_predict_builds(option: str, tmp_path: Path) -> None:
    overrides = ["experiment=x", f"model={option}", "dataset.num_classes=3", "dataset.image_size=32"]
    cfg = compose_cfg("train", overrides)
    assert cfg.model._target_ in MODELS, f"conf/model/{option}.yaml names a class predict does not build"
    for key, offline in (("pretrained", False), ("weights", None)):  # the weights come from the checkpoint
        if key in cfg.model:
            cfg.model[key] = offline
    torch.manual_seed(0)
    model = Classifier(instantiate(cfg.model), [0.5] * 3, [0.25] * 3).eval()
    config = OmegaConf.to_container(cfg, resolve=True)
    save_atomic(
        {
            "model": model.state_dict(),
            "config": config,
            "class_names": ["a", "b", "c"],
            "image_size": 32,
            "mean": [0.5] * 3,
            "std": [0.25] * 3,
        },
        tmp_path / "best.pt",
    )
    predictor = Predictor.load(tmp_path / "best.pt", device="cpu")
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torch.softmax(model(images), 1)
    torch.testing.assert_close(predictor.probabilities(list(images)), expected)
