"""INT8 for CPUs: the fp32 export statically quantized by onnxruntime, calibrated on the experiment's own training
images, and kept only when it answers as the fp32 model does on val.

Static, not dynamic: the activations' ranges are measured once on real images (calibration), so the convolutions
run as integer kernels end to end instead of quantizing every activation at run time. QDQ format (onnxruntime's
recommended one for CPUs), per-channel weights (depthwise convolutions, as in EfficientNet-Lite, lose too much with
one scale per tensor) and ``reduce_range`` (7-bit weights: x86 CPUs without VNNI saturate 8-bit products; the file
may run on any CPU) unless ``weight_bits=8`` asks for the full range (VNNI/AMX or ARM CPUs: closer to fp32).
Activation ranges are the mean of each calibration batch's minimum and maximum (onnxruntime's
``CalibMovingAverage``), not the extremes of all of them: one outlier image would otherwise widen a range and coarsen
every other image's steps. Only the convolutions and what sits between
them are quantized; the first convolution (it sees the raw normalized pixels), the fully connected head, the
normalization, temperature and softmax stay float. Measurements: docs/deploy.md, "INT8 for CPUs".

The gate (``parity.json``'s ``int8`` record): on the experiment's val images, each decoded once by the export's own
predictor, the INT8 model's top class must agree with the fp32 model's on at least ``min_agreement`` of them and
its accuracy may fall at most ``max_accuracy_drop`` below the fp32 model's. Calibration and gate run the ONNX
files as predict.py and imgclf-serve run them (:class:`~imgclf.deploy.onnx_predictor.OnnxPredictor`); no torch.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.data.splits_file import read_splits
from imgclf.deploy.metadata import INPUT_NAME, METADATA_KEY
from imgclf.errors import DataError, ImgclfError

log = logging.getLogger(__name__)

INT8_FILE = "model.int8.onnx"
QUANTIZATION_KEY = "imgclf.quantization"  # metadata_props: how the file was quantized (model.onnx has none)
CALIBRATION_IMAGES = 200
WEIGHT_BITS = (7, 8)  # 7: reduce_range, safe on every x86 CPU; 8: the full range, for VNNI/AMX or ARM CPUs
CALIBRATION_SEED = 0
CALIBRATION_BATCH = 8  # images per calibration run: the ranges are the mean of each batch's min and max
# the convolutions and what sits between them (so integer tensors flow from one to the next without a float
# round trip); the fully connected head stays float: little compute, and the logits are where rounding shows
OPERATORS = ("Conv", "Clip", "Relu", "Add")
GATE_BATCH = 32


@dataclass(frozen=True)
class Int8Gate:
    """When an INT8 model may replace its fp32 model (fractions of the val images)."""

    min_agreement: float = 0.85  # its top class equals the fp32 model's on at least this share (docs/deploy.md: why)
    max_accuracy_drop: float = 0.01  # its accuracy is at most this below the fp32 model's (1 point)


class Int8Error(ImgclfError):
    """An INT8 model cannot be made, or it does not answer as its fp32 model does."""


class ImageBatches:
    """onnxruntime's ``CalibrationDataReader``: the model's uint8 input, a few images at a time."""

    def __init__(self, files: Sequence[str], load_image: Callable[[str], np.ndarray], batch: int) -> None:
        self.files, self.load_image, self.batch, self.next = list(files), load_image, batch, 0
        self.used = self.unreadable = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        images: list[np.ndarray] = []
        while len(images) < self.batch and self.next < len(self.files):
            path, self.next = self.files[self.next], self.next + 1
            try:
                images.append(self.load_image(path))
            except (DataError, OSError) as exc:  # the doctor reports bad files; calibration just skips them
                self.unreadable += 1
                log.warning("calibration skips %s: %s", path, exc)
        if not images:
            return None
        self.used += len(images)
        return {INPUT_NAME: np.stack(images)}


def split_samples(splits_csv: Path, classes: list[str], split: str) -> list[tuple[str, int]]:
    """The (path, label) rows of ``split`` in the experiment's ``splits.csv`` whose files still exist."""
    if not splits_csv.is_file():
        raise Int8Error(
            f"{splits_csv}: no such file; an INT8 export calibrates on the experiment's training images and is "
            "checked on its val images: export a checkpoint inside its experiment folder (--experiment NAME)"
        )
    splits, _ = read_splits(splits_csv, classes, missing_ok=True)
    return [(path, label) for path, label in splits.samples.get(split, []) if Path(path).is_file()]


def calibration_files(samples: Sequence[tuple[str, int]], count: int, seed: int = CALIBRATION_SEED) -> list[str]:
    """A seeded sample of ``count`` training files (all of them when there are fewer), in a stable order."""
    paths = sorted(path for path, _ in samples)
    return sorted(random.Random(seed).sample(paths, min(count, len(paths))))


def first_convolutions(model: Any) -> list[str]:
    """The names of the Conv nodes nearest the graph's input on every path (the stem, once per TTA view)."""
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found, seen, frontier = [], set(), [i.name for i in model.graph.input]
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type == "Conv":
                found.append(node.name)
            else:
                frontier.extend(node.output)
    return found


def quantize_int8(
    fp32_file: Path,
    int8_file: Path,
    files: Sequence[str],
    load_image: Callable[[str], np.ndarray],
    weight_bits: int = 7,
) -> dict:
    """Write ``int8_file``, the static INT8 twin of ``fp32_file`` calibrated on ``files`` (decoded by
    ``load_image``), with the fp32 file's imgclf metadata; returns the quantization record stored in it.
    ``weight_bits`` 7 (``reduce_range``) runs on any x86 CPU; 8, the full int8 range, needs VNNI or ARM."""
    if weight_bits not in WEIGHT_BITS:
        raise Int8Error(f"weight_bits={weight_bits!r}: expected one of {WEIGHT_BITS}")
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = ImageBatches(files, load_image, CALIBRATION_BATCH)
    with tempfile.TemporaryDirectory(dir=int8_file.parent, prefix=".int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # shape inference and onnxruntime's graph fusions (BatchNorm into Conv) first, as onnxruntime advises:
        # an unfused BatchNorm would stay float between two quantized convolutions
        quant_pre_process(str(fp32_file), str(prepared), skip_symbolic_shape=True)
        stem = first_convolutions(onnx.load(str(prepared)))
        quantize_static(
            str(prepared),
            str(int8_file),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(OPERATORS),
            per_channel=True,
            reduce_range=weight_bits == 7,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=stem,
            # every batch's min and max are kept (two numbers per tensor) and averaged at the end: an intermediate
            # merge (CalibMaxIntermediateOutputs) would blend later batches in at only 1% (averaging_constant)
            extra_options={"CalibMovingAverage": True},
        )
    if reader.used == 0:
        raise Int8Error(f"none of the {len(files)} calibration images could be read; see the warnings above")
    record = {
        "precision": "int8",
        "format": "QDQ",
        "activations": "uint8 (asymmetric; ranges: the mean of each batch's min and max)",
        "weights": "int8 per channel, " + ("reduce_range (7 bits)" if weight_bits == 7 else "full range (8 bits)"),
        "operators": list(OPERATORS),
        "float_nodes": stem,
        "calibration_images": reader.used,
        "calibration_unreadable": reader.unreadable,
        "calibration_split": "train",
        "calibration_seed": CALIBRATION_SEED,
        "onnxruntime": _version("onnxruntime"),
    }
    copy_metadata(onnx.load(str(fp32_file)), int8_file, record)
    return record


def copy_metadata(source: Any, path: Path, record: dict[str, Any]) -> None:
    """Give the quantized file the fp32 file's imgclf metadata (predict and serve read it) and ``record``."""
    import onnx

    model = onnx.load(str(path))
    kept = {p.key: p.value for p in source.metadata_props if p.key == METADATA_KEY}
    del model.metadata_props[:]
    for key, value in {**kept, QUANTIZATION_KEY: json.dumps(record, sort_keys=True)}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = source.doc_string + " (INT8, statically quantized)"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def check_int8(fp32: Any, int8: Any, samples: Sequence[tuple[str, int]], gate: Int8Gate) -> dict[str, Any]:
    """The gate's record: both models (OnnxPredictors) on the same decoded val images."""
    ref, out, labels, unreadable = [], [], [], 0
    for start in range(0, len(samples), GATE_BATCH):
        images = []
        for path, label in samples[start : start + GATE_BATCH]:
            try:
                images.append(fp32.load_image(path))
                labels.append(label)
            except (DataError, OSError):
                unreadable += 1
        if images:
            ref.append(fp32.probabilities(images))
            out.append(int8.probabilities(images))
    if not labels:
        raise Int8Error("no readable val image to check the INT8 model on; it is never kept unchecked")
    ref_p, out_p, truth = np.concatenate(ref), np.concatenate(out), np.asarray(labels)
    agreement = float((ref_p.argmax(1) == out_p.argmax(1)).mean())
    fp32_acc, int8_acc = float((ref_p.argmax(1) == truth).mean()), float((out_p.argmax(1) == truth).mean())
    record: dict[str, Any] = {
        "file": INT8_FILE,
        "val_images": len(labels),
        "val_images_unreadable": unreadable,
        "argmax_agreement": agreement,
        "fp32_accuracy": fp32_acc,
        "int8_accuracy": int8_acc,
        "accuracy_drop": fp32_acc - int8_acc,
        "max_abs_diff": float(np.abs(ref_p - out_p).max()),
        **asdict(gate),
    }
    reasons = []
    if agreement < gate.min_agreement:
        reasons.append(f"top class agrees with fp32 on {agreement:.1%} of val < {gate.min_agreement:.1%}")
    if fp32_acc - int8_acc > gate.max_accuracy_drop + 1e-9:  # equal accuracies at a drop limit of 0 pass
        reasons.append(
            f"val accuracy {int8_acc:.1%} against fp32's {fp32_acc:.1%}: "
            f"{(fp32_acc - int8_acc) * 100:.1f} points lower, more than {gate.max_accuracy_drop * 100:g}"
        )
    record["passed"] = not reasons
    if reasons:
        record["reason"] = "; ".join(reasons)
    return record


def export_int8(
    fp32_file: Path,
    splits_csv: Path,
    *,
    calibration_images: int,
    parity_samples: int,
    gate: Int8Gate,
    weight_bits: int = 7,
) -> dict[str, Any]:
    """Quantize ``fp32_file`` into ``model.int8.onnx`` beside it and check it; returns the ``int8`` record of
    ``parity.json`` (``passed`` False: the caller must not keep the file)."""
    from imgclf.deploy.onnx_predictor import OnnxPredictor

    fp32 = OnnxPredictor.load(fp32_file)
    train = split_samples(splits_csv, fp32.classes, "train")
    val = split_samples(splits_csv, fp32.classes, "val")
    if not train or not val:
        raise Int8Error(
            f"{splits_csv} lists {len(train)} existing train and {len(val)} val images: an INT8 export needs both "
            "(calibration on train, the gate on val)"
        )
    int8_file = fp32_file.with_name(INT8_FILE)
    files = calibration_files(train, calibration_images)
    log.info("calibrating INT8 on %d training images", len(files))
    quantization = quantize_int8(fp32_file, int8_file, files, fp32.load_image, weight_bits)
    int8 = OnnxPredictor.load(int8_file, max_pixels=fp32.max_pixels)
    record = check_int8(fp32, int8, val[:parity_samples] if parity_samples else val, gate)
    record["quantization"] = quantization
    return record


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
