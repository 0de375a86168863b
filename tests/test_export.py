"""imgclf-export and the torch-free predictor: the exported file computes what the checkpoint computes (val images,
random inputs, batch 1 and 5, temperature, flip TTA, the centre crop), a failed parity check leaves no model,
predict.py --model never imports torch, and every model option exports."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers import ROOT, compose_cfg, copy_trained, make_folder, options
from imgclf.cli import export as export_cli
from imgclf.cli import predict
from imgclf.data.splits_file import read_splits
from imgclf.deploy import export as export_module
from imgclf.deploy.export import export
from imgclf.deploy.metadata import METADATA_KEY, ModelInfo
from imgclf.deploy.model_card import evaluation
from imgclf.deploy.onnx_predictor import OnnxPredictor
from imgclf.experiment.checkpoint import load_checkpoint, save_atomic
from imgclf.inference import Predictor
from imgclf.models.classifier import TTA_MODES, Classifier

TOLERANCE = 1e-4
TEMPERATURE = 0.7  # a calibrated checkpoint: the export must divide by it
# 5-40 s each here (CI runs them)
SLOW_MODELS = {"lite_ensemble", "torchvision", "resnet_like_v2", "small_resnet", "timm"}


@pytest.fixture(scope="module")
def exported(trained_tiny: tuple[list[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's experiment, calibrated (temperature 0.7), exported once by ``imgclf-export --experiment``."""
    _, exp = copy_trained(trained_tiny, tmp_path_factory.mktemp("exported"))
    payload = load_checkpoint(exp / "best.pt")
    save_atomic(
        {
            **payload,
            "temperature": TEMPERATURE,
            "display_names": {"circle": "round thing"},
            "calibration": {"split": "val", "samples": 18, "nll_before": 0.9, "nll_after": 0.5},
        },
        exp / "best.pt",
    )
    assert export_cli.main(["--experiment", exp.name, "--experiments-dir", str(exp.parent)]) == 0
    return exp


def save_model(model: Classifier, cfg, path: Path, **extra: object) -> None:
    """A checkpoint of ``model`` (3 classes a, b, c at 32 px, normalized by 0.5 / 0.25) as training writes one."""
    payload = {"model": model.state_dict(), "config": OmegaConf.to_container(cfg, resolve=True)}
    save_atomic(
        {**payload, "class_names": ["a", "b", "c"], "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, **extra},
        path,
    )


def val_files(exp: Path) -> list[str]:
    classes = load_checkpoint(exp / "best.pt")["class_names"]
    return [path for path, _ in read_splits(exp / "splits.csv", classes)[0].samples["val"]]


@pytest.mark.slow
def test_exporting_the_tiny_experiment_writes_a_checked_model_its_parity_and_card(exported: Path) -> None:
    folder = exported / "export"
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model_card.json", "model_card.md", "parity.json"]
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= TOLERANCE and parity["argmax_agreement"] == 1.0
    assert parity["samples"] == len(val_files(exported)) + parity["random_images"] == 18 + 16
    card = json.loads((folder / "model_card.json").read_text())
    assert card["model_file"]["sha256"] == hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    assert card["classes"] == ["circle", "square", "stripes"] and card["input"]["image_size"] == 16
    assert card["calibration"]["temperature"] == TEMPERATURE and card["calibration"]["nll_after"] == 0.5
    assert card["data"]["split_counts"] == {"train": 48, "val": 18, "test": 18}
    assert card["training"]["model"]["_target_"] == "imgclf.models.small_cnn.SmallCNN"
    assert card["versions"]["onnxruntime"] == ort.__version__ and card["versions"]["onnx"] == onnx.__version__
    assert not card["evaluation"]["evaluated"] and "python test.py" in card["evaluation"]["note"]
    text = (folder / "model_card.md").read_text()
    assert card["model_file"]["sha256"] in text and "not evaluated: run python test.py" in text
    # the file alone is enough: what a predictor needs is in its metadata
    info = ModelInfo.from_json({p.key: p.value for p in onnx.load(folder / "model.onnx").metadata_props}[METADATA_KEY])
    assert info.classes == card["classes"] and info.temperature == TEMPERATURE
    assert info.display_names == {"circle": "round thing"}
    assert not list(exported.glob(".staging-*")) and not (exported / "export.failed.json").exists()


def test_onnxruntime_takes_uint8_nchw_with_a_free_batch_and_matches_the_torch_predictor(exported: Path) -> None:
    session = ort.InferenceSession(str(exported / "export" / "model.onnx"))
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.type == "tensor(uint8)" and isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 16, 16]
    predictor = Predictor.load(exported / "best.pt", device="cpu")
    onnx_predictor = OnnxPredictor.load(exported / "export" / "model.onnx")
    files = val_files(exported)[:5]
    images = [predictor.load_image(f) for f in files]
    for own, theirs in zip([onnx_predictor.load_image(f) for f in files], images, strict=True):
        assert own.dtype == np.uint8 and np.array_equal(own, theirs.numpy())  # one decoder for both
    expected = predictor.probabilities(images).numpy()
    for batch in (images[:1], images):
        got = session.run([out.name], {inp.name: np.stack([i.numpy() for i in batch])})[0]
        np.testing.assert_allclose(got, expected[: len(batch)], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(
        onnx_predictor.probabilities([i.numpy() for i in images]), expected, atol=TOLERANCE, rtol=0
    )
    assert onnx_predictor.classes == predictor.classes and onnx_predictor.image_size == 16
    assert onnx_predictor.display_names == {"circle": "round thing"} and onnx_predictor.max_pixels == 40_000_000


def test_I1_an_export_outside_the_parity_tolerance_fails_and_leaves_no_model(
    trained_tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _, exp = copy_trained(trained_tiny, tmp_path)
    write = export_module.add_metadata

    def skewed(path: Path, info: ModelInfo) -> None:  # a real mismatch in the real file: one weight tensor moved
        write(path, info)
        model = onnx.load(str(path))
        weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        values = onnx.numpy_helper.to_array(weight) + 0.5
        weight.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), weight.name))
        onnx.save(model, str(path))

    monkeypatch.setattr(export_module, "add_metadata", skewed)
    assert export_cli.main(["--experiment", exp.name, "--experiments-dir", str(exp.parent)]) == 1
    err = capsys.readouterr().err
    assert "does not compute what PyTorch computes" in err and "max |probability difference|" in err
    assert not (exp / "export").exists()
    assert not list(exp.rglob("model.onnx")) and not list(exp.rglob("parity.json"))
    failed = json.loads((exp / "export.failed.json").read_text())
    assert failed["passed"] is False and failed["max_abs_diff"] > TOLERANCE


def test_predict_with_the_onnx_model_never_imports_torch_and_matches_predict_with_the_checkpoint(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, path in enumerate(val_files(exported)[::3]):
        (photos / f"{i}{Path(path).suffix}").write_bytes(Path(path).read_bytes())
    (photos / "notes.jpg").write_text("not an image")
    args = [str(photos), str(tmp_path / "missing.png"), "--top-k", "3"]
    assert (
        predict.main(
            [
                *args,
                "--experiment",
                exported.name,
                "--experiments-dir",
                str(exported.parent),
                "--device",
                "cpu",
                "--output",
                str(tmp_path / "torch.json"),
            ]
        )
        == 1
    )
    capsys.readouterr()
    # the user's command, with torch made unimportable: the ONNX path must neither need nor load it
    script = (
        "import runpy, sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision'):\n"
        "            raise ImportError('torch imported by the ONNX predictor: ' + name)\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        f"sys.argv = ['predict.py', *{args!r}, '--model', {str(exported / 'export' / 'model.onnx')!r}, "
        f"'--output', {str(tmp_path / 'onnx.json')!r}]\n"
        "try:\n"
        "    runpy.run_path('predict.py', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    print('torch loaded:', 'torch' in sys.modules, file=sys.stderr)\n"
        "    raise\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr  # a bad file and a missing one: error rows, exit 1
    assert "torch loaded: False" in done.stderr and "ImportError" not in done.stderr
    ours, theirs = (json.loads((tmp_path / f"{n}.json").read_text())["predictions"] for n in ("onnx", "torch"))
    assert [p["path"] for p in ours] == [p["path"] for p in theirs] and len(ours) == 6 + 2
    assert [p["error"] for p in ours] == [p["error"] for p in theirs]
    assert sum(p["error"] is not None for p in ours) == 2
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine["pred"] == reference["pred"] and mine["name"] == reference["name"]
        got = {t["class"]: t["probability"] for t in mine["top_k"]}
        assert got == pytest.approx({t["class"]: t["probability"] for t in reference["top_k"]}, abs=TOLERANCE)
    assert "round thing" in done.stdout  # display names from the file


def test_predict_model_refuses_a_tta_the_export_does_not_have(exported: Path, capsys) -> None:
    image = val_files(exported)[0]
    assert predict.main([image, "--model", str(exported / "export" / "model.onnx"), "--tta", "flip"]) == 2
    assert "imgclf-export --tta flip" in capsys.readouterr().err


def test_flip_tta_export_equals_the_torch_predictor_with_flip(exported: Path, tmp_path: Path) -> None:
    result = export(exported / "best.pt", tmp_path / "flip", tta="flip", experiment=exported)
    onnx_predictor = OnnxPredictor.load(result.model)
    predictor = Predictor.load(exported / "best.pt", device="cpu", tta="flip")
    plain = Predictor.load(exported / "best.pt", device="cpu")
    files = val_files(exported)[:6]
    expected = predictor.probabilities([predictor.load_image(f) for f in files]).numpy()
    got = onnx_predictor.probabilities([onnx_predictor.load_image(f) for f in files])
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)
    assert onnx_predictor.tta == "flip" and result.parity["tta"] == "flip"
    assert not np.allclose(plain.probabilities([plain.load_image(f) for f in files]).numpy(), got, atol=1e-6)


def test_torchscript_export_loads_with_torch_jit_and_matches(exported: Path, tmp_path: Path) -> None:
    result = export(exported / "best.pt", tmp_path / "ts", fmt="torchscript", experiment=exported)
    assert result.model.name == "model.torchscript.pt" and result.parity["passed"]
    extra = {f"{METADATA_KEY}.json": ""}
    with pytest.warns(FutureWarning):  # torch.jit is deprecated; the format is still asked for
        module = torch.jit.load(str(result.model), _extra_files=extra)
    assert ModelInfo.from_json(extra[f"{METADATA_KEY}.json"]).temperature == TEMPERATURE
    predictor = Predictor.load(exported / "best.pt", device="cpu")
    images = [predictor.load_image(f) for f in val_files(exported)[:3]]
    with torch.no_grad():
        torch.testing.assert_close(module(torch.stack(images)), predictor.probabilities(images), atol=TOLERANCE, rtol=0)


def test_the_onnx_centre_crop_in_numpy_equals_the_torch_path(trained_tiny, tmp_path: Path) -> None:
    """keep_aspect decodes a larger square and crops its centre (odd margins: the rounding must agree)."""
    _, exp = copy_trained(trained_tiny, tmp_path)
    payload = load_checkpoint(exp / "best.pt")
    prep = {**payload["preprocessing"], "resize": "keep_aspect", "decode_size": 21}
    save_atomic({**payload, "preprocessing": prep}, exp / "best.pt")
    photos = make_folder(tmp_path / "wide", {"": 2}, shape=(37, 23))
    files = sorted(str(p) for p in photos.rglob("*.*"))
    orphan = exp / ".staging-export.999999999.x"  # a killed export's staging folder (no such pid): removed
    orphan.mkdir()
    (orphan / "model.onnx").write_bytes(b"half")
    result = export(exp / "best.pt", exp / "export")
    assert not orphan.exists()
    predictor, onnx_predictor = Predictor.load(exp / "best.pt", device="cpu"), OnnxPredictor.load(result.model)
    for path in files:
        mine, theirs = onnx_predictor.load_image(path), predictor.load_image(path)
        assert mine.shape == (3, 16, 16) and np.array_equal(mine, theirs.numpy()), path
    assert result.parity["pixels_mismatched"] == 0 and result.parity["val_images"] == 18


def test_the_card_reports_the_test_metrics_of_this_checkpoint_only(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    metrics = {
        "checkpoint": str(tmp_path / "best.pt"),
        "split": "test",
        "samples": 9,
        "accuracy": 0.9,
        "accuracy_ci": [0.8, 0.95],
        "f1": 0.85,
        "f1_ci": [0.7, 0.9],
        "ci_level": 0.95,
        "tta": "none",
    }
    (tmp_path / "test" / "metrics.json").write_text(json.dumps(metrics))
    record = evaluation(tmp_path, tmp_path / "best.pt", "none")
    assert record["evaluated"] and record["metrics"]["accuracy_ci"] == [0.8, 0.95] and record["samples"] == 9
    other = evaluation(tmp_path, tmp_path / "last.pt", "none")
    assert not other["evaluated"] and "another checkpoint" in other["note"]


def test_predict_spells_the_tta_modes_of_the_model_package() -> None:
    assert predict.TTA_MODES == export_cli.TTA_MODES == TTA_MODES


@pytest.mark.parametrize(
    "option", [pytest.param(o, marks=pytest.mark.slow) if o in SLOW_MODELS else o for o in options("model")]
)
@pytest.mark.slow
def test_every_model_option_exports_within_the_parity_tolerance(option: str, tmp_path: Path) -> None:
    cfg = compose_cfg("train", ["experiment=x", f"model={option}", "dataset.num_classes=3", "dataset.image_size=32"])
    for key, offline in (("pretrained", False), ("weights", None)):  # no download: the weights are the checkpoint's
        if key in cfg.model:
            cfg.model[key] = offline
    torch.manual_seed(0)
    model = Classifier(instantiate(cfg.model), [0.5] * 3, [0.25] * 3).eval()
    save_model(model, cfg, tmp_path / "best.pt", temperature=1.5)
    result = export(tmp_path / "best.pt", tmp_path / "export")
    assert result.parity["passed"] and result.parity["exporter"] == "dynamo", result.parity
    assert result.parity["max_abs_diff"] <= TOLERANCE and result.parity["samples"] == 16
    assert os.path.getsize(result.model) > 0 and not list(tmp_path.glob("export/*.data"))


def test_the_legacy_exporter_is_used_when_the_dynamo_one_fails(tmp_path: Path, monkeypatch, caplog) -> None:
    cfg = compose_cfg("train", ["experiment=x", "model=tinyvgg", "dataset.num_classes=3", "dataset.image_size=32"])
    model = Classifier(instantiate(cfg.model), [0.5] * 3, [0.25] * 3).eval()
    save_model(model, cfg, tmp_path / "best.pt")

    def unsupported(*args: object) -> None:
        raise NotImplementedError("an operator the dynamo exporter does not translate")

    monkeypatch.setattr(export_module, "export_dynamo", unsupported)
    result = export(tmp_path / "best.pt", tmp_path / "export")
    assert result.parity["exporter"] == "legacy" and result.parity["passed"]
    assert "using the TorchScript-based one" in caplog.text
    assert OnnxPredictor.load(result.model).classes == ["a", "b", "c"]


def test_predict_model_names_a_file_that_is_not_an_export(tmp_path: Path, capsys) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07junk")
    image = make_folder(tmp_path / "d", {"": 1}) / "circle" / "img_000.jpg"
    assert predict.main([str(image), "--model", str(tmp_path / "model.onnx")]) == 2
    assert "onnxruntime cannot load it" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a checkpoint passed as --model: the usage error says --checkpoint
        predict.main([str(image), "--model", str(tmp_path / "best.pt")])
    assert "pass it as --checkpoint" in capsys.readouterr().err


def test_an_evaluation_transform_the_export_would_not_apply_is_refused(trained_tiny, tmp_path: Path, capsys) -> None:
    _, exp = copy_trained(trained_tiny, tmp_path)
    payload = load_checkpoint(exp / "best.pt")
    config = {
        **payload["config"],
        "augmentation": {
            **payload["config"]["augmentation"],
            "eval": {"_target_": "torchvision.transforms.v2.Grayscale"},
        },
    }
    save_atomic({**payload, "config": config}, exp / "best.pt")
    assert export_cli.main(["--checkpoint", str(exp / "best.pt")]) == 1
    assert "augmentation.eval='torchvision.transforms.v2.Grayscale'" in capsys.readouterr().err
    assert not (exp / "export").exists()


def test_the_export_folds_in_the_tta_its_checkpoint_was_evaluated_with(exported: Path, tmp_path: Path) -> None:
    # a recipe that evaluates with flip (transfer, the Lite0 recipes): its export serves what its report measured
    payload = load_checkpoint(exported / "best.pt")
    save_atomic({**payload, "config": {**payload["config"], "tta": "flip"}}, tmp_path / "best.pt")

    def exported_tta(folder: str, *extra: str) -> str:
        args = [
            "--checkpoint",
            str(tmp_path / "best.pt"),
            "--format",
            "torchscript",
            "--output",
            str(tmp_path / folder),
        ]
        assert export_cli.main([*args, *extra]) == 0
        return json.loads((tmp_path / folder / "parity.json").read_text())["tta"]

    assert exported_tta("default") == "flip"
    assert exported_tta("asked", "--tta", "none") == "none"


def test_an_export_without_the_deploy_packages_is_one_line_saying_what_to_install(
    exported: Path, monkeypatch, capsys
) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else find_spec(name, *a)
    )
    assert (
        export_cli.main(
            [
                "--experiment",
                exported.name,
                "--experiments-dir",
                str(exported.parent),
                "--output",
                str(exported / "never"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "onnxscript is not installed" in err and "pip install -e '.[deploy]'" in err
    assert not (exported / "never").exists()


def test_predict_model_without_onnxruntime_is_one_line_saying_what_to_install(
    exported: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ModuleNotFoundError
    image = val_files(exported)[0]
    assert predict.main([image, "--model", str(exported / "export" / "model.onnx")]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime is not installed" in err and "pip install" in err and "Traceback" not in err
