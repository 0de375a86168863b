"""Frozen passes on onnxruntime (trainer.frozen_engine): the same numbers as PyTorch, the export kept for later runs,
and PyTorch whenever onnxruntime could differ (a failed export, a parity miss, training, gradients)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import compose_cfg, tiny_overrides
from imgclf import tasks
from imgclf.errors import ConfigError
from imgclf.training.onnx_twin import TOLERANCE, OnnxTwin, chosen_engine, faster_backbone

pytest.importorskip("onnxruntime")


def small_backbone(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)
    )
    net[1].running_mean.uniform_(-0.5, 0.5)  # statistics that differ from a fresh layer's, as a pretrained one's do
    return net.eval()


class TracedOtherwise(nn.Module):
    """Computes one thing in PyTorch and another when the exporter traces it: the parity check must catch it."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = small_backbone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return out * 2 if torch.jit.is_tracing() or torch.compiler.is_exporting() else out


class NotExportable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = small_backbone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.compiler.is_exporting() or torch.compiler.is_compiling():
            raise RuntimeError("this module cannot be exported")
        return self.inner(x)


def test_the_twin_computes_pytorchs_features_and_keeps_its_export(tmp_path: Path) -> None:
    backbone, images = small_backbone(), torch.rand(6, 3, 20, 20)
    twin = OnnxTwin(backbone, tmp_path)
    with torch.no_grad():
        expected, got = backbone(images), twin(images)
        assert twin.session is not None and twin.failed is None  # onnxruntime computed it
        options = twin.session.get_session_options()  # its idle threads sleep: they share the cores
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert twin.parity is not None and twin.parity <= TOLERANCE
        assert torch.allclose(got, expected, atol=1e-5)
        assert torch.allclose(twin(images[:1]), expected[:1], atol=1e-5)  # any batch size
    (kept,) = tmp_path.glob("*.onnx")
    stamp = kept.stat().st_mtime_ns
    again = OnnxTwin(small_backbone(), tmp_path)  # the same weights in a later run: the same file, not exported again
    with torch.no_grad():
        assert torch.allclose(again(images), expected, atol=1e-5)
    assert list(tmp_path.glob("*.onnx")) == [kept] and kept.stat().st_mtime_ns == stamp
    other = OnnxTwin(small_backbone(seed=1), tmp_path)  # other weights: their own file
    with torch.no_grad():
        assert torch.allclose(other(images), other.module(images), atol=1e-5)
    assert len(list(tmp_path.glob("*.onnx"))) == 2


def test_a_damaged_export_is_made_again(tmp_path: Path) -> None:
    images = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        OnnxTwin(small_backbone(), tmp_path)(images)
        (kept,) = tmp_path.glob("*.onnx")
        kept.write_bytes(b"not a model")
        twin = OnnxTwin(small_backbone(), tmp_path)
        assert torch.allclose(twin(images), twin.module(images), atol=1e-5) and twin.session is not None
    assert kept.stat().st_size > 1000


@pytest.mark.parametrize(
    ("module", "reason"),
    [(TracedOtherwise, "differ from PyTorch's"), (NotExportable, "the export to onnxruntime failed")],
)
def test_a_twin_that_would_differ_leaves_the_passes_to_pytorch(module: type, reason: str, caplog) -> None:
    backbone, images = module().eval(), torch.rand(4, 3, 12, 12)
    twin = OnnxTwin(backbone, None)
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        assert torch.equal(twin(images), backbone(images))
        assert torch.equal(twin(images), backbone(images))
    assert twin.session is None and reason in twin.failed
    assert "frozen passes run on PyTorch" in caplog.text and reason in caplog.text


def test_training_and_gradients_go_through_pytorch() -> None:
    backbone = small_backbone()
    twin = OnnxTwin(backbone, None)
    images = torch.rand(4, 3, 12, 12)
    twin.train()  # BatchNorm in training mode: batch statistics, which the eval-mode export does not compute
    twin(images)
    assert twin.session is None and backbone.training
    twin.eval()
    out = twin(images)  # grad enabled and trainable weights: the loss must reach them
    assert out.requires_grad and twin.session is None
    out.sum().backward()
    assert backbone[0].weight.grad is not None


def test_faster_backbone_swaps_the_backbone_for_the_block_only() -> None:
    net = nn.Module()
    net.backbone = small_backbone()
    original = net.backbone
    with faster_backbone(net, "onnxruntime", torch.device("cpu"), None):
        assert isinstance(net.backbone, OnnxTwin) and net.backbone.module is original
    assert net.backbone is original
    with faster_backbone(net, "torch", torch.device("cpu"), None):
        assert net.backbone is original
    assert chosen_engine("auto", torch.device("cpu")) == "onnxruntime"
    assert chosen_engine("auto", torch.device("cuda")) == "torch"  # onnxruntime runs on the CPU only


def test_a_bad_engine_is_a_config_error(tmp_path: Path, tiny_folder: Path) -> None:
    with pytest.raises(ConfigError, match=r"trainer.frozen_engine='gpu'.*auto, onnxruntime, torch"):
        tasks.train(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "trainer.frozen_engine=gpu")))


@pytest.mark.slow
def test_a_transfer_run_on_onnxruntime_reports_what_pytorch_reports(tmp_path: Path, tiny_folder: Path, caplog) -> None:
    """The feature cache and test.py (with the flip) of a frozen Lite0 on onnxruntime; test.py reuses the backbone
    train.py exported, and reports the metrics PyTorch reports for the same checkpoint."""
    caplog.set_level(logging.INFO)
    common = (
        "model=lite0",
        "model.freeze=backbone",
        "dataset.image_size=32",
        "trainer.cache_features=true",
        "tta=flip",
    )
    overrides = tiny_overrides(tmp_path, tiny_folder, *common, "trainer.frozen_engine=onnxruntime")
    tasks.train(compose_cfg("train", overrides))
    assert caplog.text.count("frozen passes run on onnxruntime") == 1  # the feature cache
    exported = sorted((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(exported) == 1
    caplog.clear()
    fast = tasks.test(compose_cfg("train", overrides))
    assert caplog.text.count("frozen passes run on onnxruntime") == 1
    assert sorted((tmp_path / "cache" / "onnx").glob("*.onnx")) == exported  # test.py reused train.py's export
    caplog.clear()
    slow = tasks.test(compose_cfg("train", [*overrides, "trainer.frozen_engine=torch"]))
    assert "frozen passes run on onnxruntime" not in caplog.text
    assert fast["accuracy"] == slow["accuracy"] and fast["f1"] == pytest.approx(slow["f1"])
    assert fast["loss"] == pytest.approx(slow["loss"], abs=1e-4)
