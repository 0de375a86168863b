"""model=timm: timm architectures of several families train, checkpoint, predict and export with parity; their
pretrained config brings the input size and normalization; the feature cache works on them; offline
``pretrained=true`` and checkpoints naming anything but a timm architecture are clear errors. Nothing here needs
the network: the weights are trained from scratch here, or a local file written by the test."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.data import IMAGENET_DEFAULT_MEAN

import imgclf.tasks as tasks
from helpers import ROOT, compose_cfg, tiny_overrides
from imgclf.cli.common import ENGINES as CLI_ENGINES
from imgclf.deploy.export import export
from imgclf.deploy.onnx_predictor import OnnxPredictor
from imgclf.deploy.parity import TOLERANCE
from imgclf.errors import CheckpointError, ConfigError
from imgclf.experiment.checkpoint import load_checkpoint, save_atomic
from imgclf.experiment.run_log import read_metrics
from imgclf.inference import Predictor
from imgclf.models.timm_net import TimmNet
from imgclf.training.onnx_twin import ENGINES

slow = pytest.mark.slow
# timm's own tiny test_* networks (0.1-0.4 M parameters) of each family train in seconds; the real small members
# of the same families run in CI. ViTs are built for the run's input size (timm's img_size).
FAMILIES = [
    "test_resnet",  # the default suite's round trip (about 20 s here, most of it the ONNX export)
    pytest.param("test_convnext", marks=slow),
    pytest.param("test_efficientnet", marks=slow),
    pytest.param("test_vit", marks=slow),
    pytest.param("resnet10t", marks=slow),
    pytest.param("convnext_atto", marks=slow),
    pytest.param("mobilenetv3_small_050", marks=slow),
    pytest.param("vit_tiny_patch16_224", marks=slow),
]


def train(tmp_path: Path, folder: Path, *extra: str) -> Path:
    """One epoch of model=timm on the tiny folder; the experiment folder."""
    overrides = tiny_overrides(tmp_path, folder, "model=timm", "epochs=1", "dataset.image_size=32", *extra)
    tasks.train(compose_cfg("train", overrides))
    return tmp_path / "experiments" / "tiny"


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.slow
def test_a_timm_family_trains_checkpoints_predicts_and_exports_with_parity(
    name: str, tmp_path: Path, tiny_folder: Path
) -> None:
    exp = train(tmp_path, tiny_folder, f"model.name={name}")
    predictor = Predictor.load(exp / "best.pt", device="cpu")
    assert predictor.model.net.backbone.pretrained_cfg["architecture"] == name  # rebuilt from the checkpoint
    # predict (its own decoding of the files) agrees with the accuracy training measured on val
    files = sorted((tiny_folder / "val").rglob("*.*"))
    images = [predictor.load_image(f) for f in files]
    probabilities = predictor.probabilities(images)
    labels = torch.tensor([predictor.classes.index(f.parent.name) for f in files])
    accuracy = float((probabilities.argmax(1) == labels).float().mean())
    assert accuracy == pytest.approx(read_metrics(exp / "metrics.jsonl")[-1]["val/acc"], abs=1e-6)
    result = export(exp / "best.pt", exp / "export")
    assert result.parity["passed"] and result.parity["max_abs_diff"] <= TOLERANCE == 1e-4, result.parity
    onnx = OnnxPredictor.load(exp / "export" / "model.onnx")
    got = onnx.probabilities([onnx.load_image(f) for f in files])
    np.testing.assert_allclose(got, probabilities.numpy(), atol=TOLERANCE, rtol=0)


def test_local_weights_bring_their_input_size_normalization_and_resampled_positions(
    tmp_path: Path, tiny_folder: Path
) -> None:
    # a ViT checkpoint at its native 160 px (what a model.safetensors from the Hub is), mean/std 0.5
    torch.manual_seed(0)
    source = timm.create_model("test_vit").state_dict()
    save_file(source, tmp_path / "model.safetensors")
    exp = train(
        tmp_path,
        tiny_folder,
        "model.name=test_vit",
        f"model.weights={tmp_path / 'model.safetensors'}",
        "model.freeze=backbone",
        "dataset.image_size=auto",
    )
    payload = load_checkpoint(exp / "best.pt")
    # the images are 24 px: auto enlarges them to half the weights' native 160 px, the ViT is built for 80 px
    assert payload["image_size"] == 80 and payload["config"]["model"]["image_size"] == 80
    assert payload["mean"] == [0.5] * 3 and payload["std"] == [0.5] * 3  # the weights', not the dataset's ImageNet
    weights = payload["model"]
    assert torch.equal(weights["net.backbone.patch_embed.proj.weight"], source["patch_embed.proj.weight"])
    assert weights["net.backbone.pos_embed"].shape[1] == 1 + 5 * 5  # 160 px: 10 x 10 patches, resampled to 5 x 5
    assert Predictor.load(exp / "best.pt", device="cpu").image_size == 80


@slow  # two or more trainings: 20-30 s here
def test_the_transfer_recipe_takes_a_timm_backbone(tmp_path: Path, tiny_folder: Path, caplog) -> None:
    # the documented `-cn=transfer model=timm model.pretrained=true`, its weights a local file instead of the Hub's
    torch.manual_seed(0)
    source = timm.create_model("test_efficientnet").state_dict()  # ImageNet mean/std, native 160 px
    save_file(source, tmp_path / "model.safetensors")
    extra = ("model=timm", "model.name=test_efficientnet", f"model.weights={tmp_path / 'model.safetensors'}")
    with caplog.at_level("INFO"):
        tasks.train(compose_cfg("transfer", tiny_overrides(tmp_path, tiny_folder, *extra, "dataset.image_size=auto")))
    assert "cached backbone features" in caplog.text  # the recipe's frozen backbone, its features cached
    payload = load_checkpoint(tmp_path / "experiments" / "tiny" / "best.pt")
    assert payload["image_size"] == 80  # 24 px images: enlarged to half the weights' native 160 px
    assert payload["mean"] == pytest.approx(list(IMAGENET_DEFAULT_MEAN))
    assert payload["config"]["model"]["hidden"] == [512]  # the recipe's head
    frozen = {k.removeprefix("net.backbone."): v for k, v in payload["model"].items() if k.startswith("net.backbone.")}
    assert all(torch.equal(value, source[key]) for key, value in frozen.items())


def test_the_pretrained_config_answers_without_a_download() -> None:
    assert TimmNet.native_input_size("convnext_nano", pretrained=True) == 224
    assert TimmNet.native_input_size("test_vit", pretrained=True) == 160
    assert TimmNet.native_input_size("convnext_nano", pretrained=False) is None  # from scratch: any size
    scratch = TimmNet(3, name="test_efficientnet")
    assert scratch.input_mean is None and scratch.input_std is None  # the dataset's normalization applies


@slow  # two or more trainings: 20-30 s here
def test_the_feature_cache_trains_a_frozen_timm_backbone_head_as_the_full_model_does(
    tmp_path: Path, tiny_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    common = ("model.name=test_resnet", "model.freeze=backbone", "epochs=2")
    full = train(tmp_path / "full", tiny_folder, *common)
    with caplog.at_level("INFO"):
        cached = train(tmp_path / "cached", tiny_folder, *common, "trainer.cache_features=true")
    assert "cached backbone features" in caplog.text
    full_weights, cached_weights = (load_checkpoint(exp / "last.pt")["model"] for exp in (full, cached))
    for key, value in full_weights.items():  # the backbone untouched (BatchNorm statistics too), the heads alike
        torch.testing.assert_close(cached_weights[key], value, atol=1e-4, rtol=1e-4)
    before = TimmNet(3, name="test_resnet").state_dict()
    assert not torch.equal(full_weights["net.head.1.weight"], before["head.1.weight"])  # but the head learned


def test_freezing_and_the_backbone_learning_rate_cover_every_timm_parameter() -> None:
    model = TimmNet(3, name="test_convnext", freeze="backbone", unfreeze_at_epoch=2, backbone_lr_scale=0.1)
    head, backbone = model.param_groups(1.0)
    assert (head["lr"], backbone["lr"]) == (1.0, pytest.approx(0.1))
    assert len(head["params"]) + len(backbone["params"]) == len(list(model.parameters()))
    assert [p.requires_grad for p in backbone["params"]] == [False] * len(backbone["params"])
    model.set_epoch(2)  # from unfreeze_at_epoch on, the whole network trains
    assert all(p.requires_grad for p in model.parameters())


def test_drop_path_rate_reaches_the_backbone() -> None:
    with pytest.raises(ConfigError, match="drop_path_rate=1.5"):
        TimmNet(3, name="test_convnext", drop_path_rate=1.5)
    rates = [
        m.drop_prob for m in TimmNet(3, name="test_convnext", drop_path_rate=0.2).modules() if hasattr(m, "drop_prob")
    ]
    assert rates and max(rates) == pytest.approx(0.2)
    plain = TimmNet(3, name="test_convnext")
    assert all(getattr(m, "drop_prob", 0) == 0 for m in plain.modules())


@pytest.mark.parametrize(
    "name,message",
    [
        ("convnxt_nano", "not a timm architecture.*similar: convnext_nano"),
        ("hf-hub:timm/resnet18.a1_in1k", "not a timm architecture"),  # no configuration fetched from the Hub
        ("resnet18.no_such_tag", "Invalid pretrained tag.*resnet18.a1_in1k"),
    ],
)
def test_names_timm_does_not_register_are_config_errors(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TimmNet(3, name=name)


def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The Hugging Face Hub offline and its cache empty (huggingface_hub reads the variables when imported)."""
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_pretrained_offline_is_a_config_error_that_says_what_to_do(monkeypatch, tmp_path: Path) -> None:
    offline(monkeypatch, tmp_path)
    with pytest.raises(ConfigError, match=r"timm's pretrained weights for convnext_atto.*internet once") as caught:
        TimmNet(3, name="convnext_atto", pretrained=True)
    assert "model.pretrained=false" in str(caught.value) and "model.weights=" in str(caught.value)
    with pytest.raises(ConfigError, match="model.weights: no file"):
        TimmNet(3, name="convnext_atto", weights=str(tmp_path / "missing.safetensors"))


@slow
def test_train_py_offline_with_pretrained_weights_exits_with_the_message(tmp_path: Path, tiny_folder: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HYDRA_FULL_ERROR": "0"}
    overrides = tiny_overrides(tmp_path, tiny_folder, "model=timm", "model.name=convnext_atto", "model.pretrained=true")
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides], env=env, capture_output=True, text=True, timeout=300
    )
    output = done.stdout + done.stderr  # the entry point logs the error line
    assert done.returncode == 1 and "Traceback" not in output, output
    assert "timm's pretrained weights for convnext_atto" in output and "model.pretrained=false" in output


@pytest.mark.parametrize("name", ["hf-hub:someone/anything", "os.system", "resnet18:evil"])
def test_a_checkpoint_can_name_only_timm_architectures(name: str, tmp_path: Path, monkeypatch) -> None:
    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("predict reached the network")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", no_download)
    model = {"_target_": "imgclf.models.timm_net.TimmNet", "num_classes": 3, "name": name, "pretrained": True}
    payload = {"model": {}, "config": {"model": model}, "class_names": ["a", "b", "c"], "image_size": 32}
    save_atomic({**payload, "mean": [0.5] * 3, "std": [0.25] * 3}, tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match="cannot build TimmNet.*not a timm architecture"):
        Predictor.load(tmp_path / "best.pt", device="cpu")


def test_predict_runs_a_checkpoints_backbone_on_onnxruntime_with_torchs_answers(
    tmp_path: Path, tiny_folder: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """predict.py --engine auto on a CPU: the backbone exported once into the user's cache, the same probabilities
    as --engine torch, and the kept file reused by the next run."""
    pytest.importorskip("onnxruntime")
    from imgclf.cli import predict as predict_cli

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache_home"))
    exp = train(tmp_path, tiny_folder, "model.name=test_resnet")
    folder = str(tiny_folder / "val")

    def run(engine: str) -> list[list[float]]:
        out = tmp_path / f"{engine}.json"
        args = [folder, "--checkpoint", str(exp / "best.pt"), "--output", str(out), "--engine", engine]
        assert predict_cli.main([*args, "--device", "cpu"]) == 0
        rows = json.loads(out.read_text())["predictions"]
        return [[c["probability"] for c in sorted(r["top_k"], key=lambda c: c["class"])] for r in rows]

    with caplog.at_level(logging.INFO, logger="imgclf.training.onnx_twin"):
        eager = run("torch")
        assert "onnxruntime" not in caplog.text
        twin = run("auto")
        assert "frozen passes run on onnxruntime" in caplog.text
    np.testing.assert_allclose(twin, eager, atol=1e-4, rtol=0)
    (kept,) = (tmp_path / "cache_home" / "imgclf" / "onnx").glob("*.onnx")
    assert CLI_ENGINES == ENGINES  # the command line's choices, spelled out without torch
    stamp = kept.stat().st_mtime_ns
    np.testing.assert_allclose(run("onnxruntime"), eager, atol=1e-4, rtol=0)
    assert kept.stat().st_mtime_ns == stamp  # found, not exported again


def test_serve_exports_a_checkpoints_backbone_before_the_first_request(tmp_path: Path, tiny_folder: Path) -> None:
    """imgclf-serve --engine auto: the backbone is exported and checked at start (on random pixels), kept in the
    cache, and the answers are PyTorch's."""
    pytest.importorskip("fastapi")
    pytest.importorskip("onnxruntime")
    from serve_helpers import MULTIPART, multipart, start_server, stop_server

    exp = train(tmp_path, tiny_folder, "model.name=test_resnet")
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "imgclf" / "onnx"
    before = set(cache.glob("*.onnx"))
    server = start_server("--model", str(exp / "best.pt"), "--log-level", "info", "--device", "cpu")
    try:
        assert "frozen passes run on onnxruntime" in server.log()  # before any request
        assert len(set(cache.glob("*.onnx")) - before) == 1
        image = next((tiny_folder / "test").rglob("*.*"))
        body = multipart([(image.name, image.read_bytes())])
        with server.client() as client:
            got = client.post("/predict", content=body, headers={"content-type": MULTIPART}).json()
    finally:
        stop_server(server)
    predictor = Predictor.load(exp / "best.pt", device="cpu")
    expected = predictor.probabilities([predictor.load_image(image)])[0]
    served = {p["class"]: p["probability"] for p in got["predictions"]}  # one file: one result
    np.testing.assert_allclose([served[c] for c in predictor.classes], expected.numpy(), atol=1e-4, rtol=0)
