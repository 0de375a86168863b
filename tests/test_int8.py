"""imgclf-export --quantize int8: model.int8.onnx really is quantized (QDQ nodes, int8 weights), is calibrated on the
experiment's training images, keeps the fp32 file's metadata so predict.py and OnnxPredictor use it unchanged, and
is kept only when the gate against the fp32 model on val holds (parity.json, the model card)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import copy_trained, read_csv
from imgclf.cli import export as export_cli
from imgclf.cli import predict
from imgclf.deploy import quantize
from imgclf.deploy.export import ExportError, export
from imgclf.deploy.onnx_predictor import OnnxPredictor
from imgclf.deploy.quantize import INT8_FILE, QUANTIZATION_KEY, Int8Gate, calibration_files, split_samples
from imgclf.experiment.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def exported(trained_tiny: tuple[list[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's experiment exported once by ``imgclf-export --experiment NAME --quantize int8``."""
    _, exp = copy_trained(trained_tiny, tmp_path_factory.mktemp("int8"))
    argv = ["--experiment", exp.name, "--experiments-dir", str(exp.parent), "--quantize", "int8"]
    assert export_cli.main([*argv, "--calibration-images", "20"]) == 0
    return exp


def samples(exp: Path, split: str) -> list[tuple[str, int]]:
    return split_samples(exp / "splits.csv", load_checkpoint(exp / "best.pt")["class_names"], split)


def test_the_int8_file_is_quantized_with_int8_weights_and_the_fp32_one_is_not(exported: Path) -> None:
    folder = exported / "export"
    assert {"model.onnx", INT8_FILE, "parity.json", "model_card.md", "model_card.json"} == {
        p.name for p in folder.iterdir()
    }
    int8, fp32 = onnx.load(str(folder / INT8_FILE)), onnx.load(str(folder / "model.onnx"))
    ops = Counter(node.op_type for node in int8.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0 and ops["Conv"] > 0
    assert not {"QuantizeLinear", "DequantizeLinear"} & {node.op_type for node in fp32.graph.node}
    # every convolution but the stem takes its weight from a DequantizeLinear of an int8 initializer (per channel:
    # one scale each) and its input from a DequantizeLinear of a quantized activation
    meta = {p.key: p.value for p in int8.metadata_props}
    record = json.loads(meta[QUANTIZATION_KEY])
    assert record["precision"] == "int8" and len(record["float_nodes"]) == 1  # the stem (no TTA: one view)
    produced = {out: node for node in int8.graph.node for out in node.output}
    initializers = {init.name: init for init in int8.graph.initializer}
    convs = [node for node in int8.graph.node if node.op_type == "Conv" and node.name not in record["float_nodes"]]
    assert len(convs) == ops["Conv"] - 1
    for conv in convs:
        dequantize = produced[conv.input[1]]
        assert dequantize.op_type == "DequantizeLinear" and produced[conv.input[0]].op_type == "DequantizeLinear"
        weight, scale = initializers[dequantize.input[0]], initializers[dequantize.input[1]]
        assert weight.data_type == onnx.TensorProto.INT8 and scale.dims == [weight.dims[0]]
    assert meta["imgclf"] == {p.key: p.value for p in fp32.metadata_props}["imgclf"]


def test_parity_json_and_the_card_state_the_int8_gate_numbers(exported: Path) -> None:
    folder = exported / "export"
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4  # the fp32 gate against PyTorch is unchanged
    int8 = parity["int8"]
    assert int8["passed"] and int8["file"] == INT8_FILE and int8["val_images"] == len(samples(exported, "val")) == 18
    assert int8["min_agreement"] == 0.85 and int8["max_accuracy_drop"] == 0.01
    assert int8["argmax_agreement"] >= 0.85 and int8["accuracy_drop"] <= 0.01
    assert int8["accuracy_drop"] == pytest.approx(int8["fp32_accuracy"] - int8["int8_accuracy"])
    assert int8["quantization"]["calibration_images"] == 20 and int8["quantization"]["calibration_split"] == "train"
    card = json.loads((folder / "model_card.json").read_text())
    assert card["int8"]["name"] == INT8_FILE and card["int8"]["precision"] == "int8"
    assert card["int8"]["parity"]["argmax_agreement"] == int8["argmax_agreement"]
    text = (folder / "model_card.md").read_text()
    assert "## INT8 model" in text and f"agrees on {int8['argmax_agreement']:.1%}" in text


def test_onnx_predictor_and_predict_py_run_the_int8_file_unchanged_and_agree_with_fp32(
    exported: Path, tmp_path: Path
) -> None:
    folder = exported / "export"
    fp32, int8 = OnnxPredictor.load(folder / "model.onnx"), OnnxPredictor.load(folder / INT8_FILE)
    assert int8.classes == fp32.classes and int8.image_size == fp32.image_size
    files = [path for path, _ in samples(exported, "test")]
    images = [fp32.load_image(path) for path in files]
    p32, p8 = fp32.probabilities(images), int8.probabilities(images)
    assert p8.shape == p32.shape and np.allclose(p8.sum(1), 1, atol=1e-5)
    assert (p8.argmax(1) == p32.argmax(1)).mean() >= 0.97
    assert not np.array_equal(p8, p32)  # another computation, not the same file under another name
    out = tmp_path / "p.csv"
    assert predict.main([*files, "--model", str(folder / INT8_FILE), "--output", str(out)]) == 0
    rows = read_csv(out)
    assert [row["pred"] for row in rows] == [fp32.classes[i] for i in p8.argmax(1)]


def test_a_failed_int8_gate_exports_nothing_and_names_the_numbers(
    trained_tiny: tuple[list[str], Path], tmp_path: Path
) -> None:
    _, exp = copy_trained(trained_tiny, tmp_path)
    impossible = Int8Gate(min_agreement=1.0, max_accuracy_drop=-1.0)  # int8 would need 100 points more than fp32
    with pytest.raises(ExportError, match=r"INT8 model does not answer as the fp32 model does: .*points lower"):
        export(exp / "best.pt", exp / "export", quantize="int8", calibration_images=8, int8_gate=impossible)
    assert not (exp / "export").exists()
    failed = json.loads((exp / "export.failed.json").read_text())
    assert failed["passed"] and not failed["int8"]["passed"] and "points lower" in failed["int8"]["reason"]


def test_calibration_is_a_seeded_sample_of_train_and_the_cli_defaults_are_the_modules(tmp_path: Path) -> None:
    rows = [(f"/data/{i:03d}.jpg", i % 3) for i in range(50)]
    picked = calibration_files(rows, 10)
    assert picked == calibration_files(list(reversed(rows)), 10) and len(set(picked)) == 10
    assert picked != calibration_files(rows, 10, seed=1) and len(calibration_files(rows, 500)) == 50
    gate = Int8Gate()
    assert (export_cli.CALIBRATION_IMAGES, export_cli.MIN_AGREEMENT, export_cli.MAX_ACCURACY_DROP) == (
        quantize.CALIBRATION_IMAGES,
        gate.min_agreement,
        gate.max_accuracy_drop,
    )
    assert export_cli.WEIGHT_BITS == quantize.WEIGHT_BITS
    with pytest.raises(SystemExit):  # INT8 is an ONNX export
        export_cli.parse_args(["--checkpoint", "x.pt", "--format", "torchscript", "--quantize", "int8"])


@pytest.mark.parametrize(("bits", "largest"), [(7, 64), (8, 127)])
def test_weight_bits_set_the_range_of_the_int8_weights_and_the_record_says_which(
    trained_tiny: tuple[list[str], Path], tmp_path: Path, bits: int, largest: int
) -> None:
    """7 bits (reduce_range, the default) keeps every weight within -64..64, safe on any x86 CPU; 8 uses the full
    int8 range (each channel's largest weight maps to 127), for CPUs with VNNI or ARM."""
    _, exp = copy_trained(trained_tiny, tmp_path)
    argv = ["--experiment", exp.name, "--experiments-dir", str(exp.parent), "--quantize", "int8"]
    gate = ["--int8-min-agreement", "0", "--int8-max-accuracy-drop", "1"]  # the range is under test, not the gate
    assert export_cli.main([*argv, "--calibration-images", "8", "--int8-weight-bits", str(bits), *gate]) == 0
    int8 = onnx.load(str(exp / "export" / INT8_FILE))
    weights = [
        onnx.numpy_helper.to_array(init) for init in int8.graph.initializer if init.data_type == onnx.TensorProto.INT8
    ]
    assert weights and max(int(np.abs(w).max()) for w in weights) == largest
    record = json.loads({p.key: p.value for p in int8.metadata_props}[QUANTIZATION_KEY])
    assert record["weights"].endswith(f"({bits} bits)")
