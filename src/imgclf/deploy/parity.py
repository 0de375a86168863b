"""Does an exported model compute what PyTorch computes? Both on the experiment's own val images (each decoded
by its own predictor's loader, so decoding is compared too) and on random uint8 inputs at batch 1 and more.

The rule: every probability within ``TOLERANCE`` of PyTorch's and the same top class for every sample. A
sample whose two best classes are within the tolerance in PyTorch itself is a tie, not a disagreement (no
float computation can promise which of two equal numbers comes first); ties are counted in the record.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclf.data.splits_file import read_splits
from imgclf.deploy.metadata import TOLERANCE  # noqa: F401  (defined without torch, for imgclf-export --help)
from imgclf.errors import DataError
from imgclf.inference import Predictor

log = logging.getLogger(__name__)

RANDOM_SAMPLES = 16  # random uint8 images, run as one batch of 1 and one of the rest
BATCH = 32
OOD_TOLERANCE = 1e-3  # the OOD score (energy: logits' scale; kNN: a cosine) of the export against PyTorch's


def check_parity(
    predictor: Predictor, model_file: Path, fmt: str, splits_csv: Path, max_val: int, tolerance: float = TOLERANCE
) -> dict[str, Any]:
    """The parity record (``parity.json``): sample counts, ``max_abs_diff``, ``argmax_agreement``, ``passed``
    and, when it fails, ``reason``."""
    exported = Exported(model_file, fmt, predictor)
    files = val_files(splits_csv, predictor.classes, max_val)
    scores = Scores()
    ref_val, out_val, refused, pixel_mismatch = compare_files(predictor, exported, files, scores)
    rng = np.random.default_rng(0)
    size = predictor.image_size
    random = rng.integers(0, 256, (RANDOM_SAMPLES, 3, size, size), dtype=np.uint8)
    ref_rand, out_rand = [], []
    for chunk in (random[:1], random[1:]):  # batch 1 and batch 15: the batch dimension is dynamic
        ref_rand.append(scores.torch(predictor, list(chunk)))
        out_rand.append(scores.exported(exported, list(chunk)))
    reference = np.concatenate([ref_val, *ref_rand])
    output = np.concatenate([out_val, *out_rand])
    record = compare(reference, output, tolerance)
    record.update(scores.record())
    record.update(
        {
            "val_images": len(ref_val),
            "val_images_unreadable": refused,
            "random_images": RANDOM_SAMPLES,
            "samples": len(reference),
            "pixels_mismatched": pixel_mismatch,
            "format": fmt,
            "splits": str(splits_csv) if files else None,
        }
    )
    if not files:
        log.warning("no val images found in %s: parity is checked on random inputs only", splits_csv)
    reasons = []
    if record["max_abs_diff"] > tolerance:
        reasons.append(f"max |probability difference| {record['max_abs_diff']:.3g} > {tolerance:g}")
    if record["argmax_agreement"] < 1.0:
        reasons.append(f"top class differs on {record['argmax_disagreements']} of {len(reference)} samples")
    if pixel_mismatch:
        reasons.append(f"the exported predictor decodes {pixel_mismatch} val image(s) to other pixels")
    if record.get("ood_max_abs_diff", 0.0) > OOD_TOLERANCE:
        reasons.append(f"max |OOD score difference| {record['ood_max_abs_diff']:.3g} > {OOD_TOLERANCE:g}")
    record["passed"] = not reasons
    if reasons:
        record["reason"] = "; ".join(reasons)
    return record


def compare(reference: np.ndarray, output: np.ndarray, tolerance: float) -> dict[str, Any]:
    """``max_abs_diff`` and ``argmax_agreement`` of two (N, C) probability arrays (ties: see the module)."""
    if reference.shape != output.shape:
        return {
            "max_abs_diff": float("inf"),
            "argmax_agreement": 0.0,
            "argmax_disagreements": len(reference),
            "ties": 0,
            "shape": [list(reference.shape), list(output.shape)],
        }
    diff = float(np.abs(reference - output).max()) if reference.size else 0.0
    ref_top, out_top = reference.argmax(1), output.argmax(1)
    rows = np.arange(len(reference))
    tie = reference[rows, ref_top] - reference[rows, out_top] <= tolerance
    agree = (ref_top == out_top) | tie
    return {
        "max_abs_diff": diff,
        "tolerance": tolerance,
        "argmax_agreement": float(agree.mean()) if len(agree) else 1.0,
        "argmax_disagreements": int((~agree).sum()),
        "ties": int((tie & (ref_top != out_top)).sum()),
    }


def val_files(splits_csv: Path, classes: list[str], limit: int) -> list[str]:
    """The experiment's val files (the first ``limit`` of them, 0: all) that still exist."""
    if not splits_csv.is_file():
        return []
    splits, _ = read_splits(splits_csv, classes, missing_ok=True)
    files = [path for path, _ in splits.samples.get("val", []) if Path(path).is_file()]
    return files[:limit] if limit else files


def compare_files(
    predictor: Predictor, exported: Exported, files: Sequence[str], scores: Scores | None = None
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Both models' probabilities on ``files`` (each decoded by its own loader), the count of files neither can
    read, and of files decoded differently (or read by only one of them); ``scores`` also collects their OOD
    scores."""
    scores = scores or Scores()
    ref, out = [], []
    refused = mismatched = 0
    for start in range(0, len(files), BATCH):
        torch_images, own_images = [], []
        for path in files[start : start + BATCH]:
            mine, theirs = _load(predictor.load_image, path), _load(exported.load_image, path)
            if mine is None and theirs is None:
                refused += 1
                continue
            if mine is None or theirs is None or not np.array_equal(np.asarray(mine), np.asarray(theirs)):
                mismatched += 1
                continue
            torch_images.append(mine)
            own_images.append(theirs)
        if torch_images:
            ref.append(scores.torch(predictor, torch_images))
            out.append(scores.exported(exported, own_images))
    classes = len(predictor.classes)
    empty = np.zeros((0, classes), dtype=np.float32)
    return (np.concatenate(ref) if ref else empty), (np.concatenate(out) if out else empty), refused, mismatched


def _load(load: Any, path: str) -> Any:
    try:
        return load(path)
    except (DataError, OSError):
        return None


class Scores:
    """Runs both models and, when the export has an OOD-score output, keeps both sides' scores of the same images
    (``ood_max_abs_diff`` in the record; the kNN bank and the energy score are inside the graph)."""

    def __init__(self) -> None:
        self.reference: list[np.ndarray] = []
        self.output: list[np.ndarray] = []

    def torch(self, predictor: Predictor, images: Sequence[Any]) -> np.ndarray:
        tensors = [torch.as_tensor(np.asarray(image)) for image in images]
        if predictor.abstain is None or predictor.abstain.ood_threshold is None:
            return predictor.probabilities(tensors).numpy()
        probs, ood = predictor.scores(tensors)
        self.reference.append(ood.double().numpy())
        return probs.numpy()

    def exported(self, exported: Exported, images: Sequence[Any]) -> np.ndarray:
        if exported.fmt != "onnx":
            return exported.probabilities(images)
        probs, ood = exported.onnx.scores([np.asarray(image) for image in images])
        if ood is not None:
            self.output.append(ood)
        return probs

    def record(self) -> dict[str, Any]:
        if not self.output:
            return {}
        reference, output = np.concatenate(self.reference), np.concatenate(self.output)
        if reference.shape != output.shape:
            return {"ood_max_abs_diff": float("inf")}
        return {"ood_max_abs_diff": float(np.abs(reference - output).max()) if len(reference) else 0.0}


class Exported:
    """The exported file as its users run it: the ONNX predictor (its own decoding), or the TorchScript module
    fed the torch predictor's pixels."""

    def __init__(self, model_file: Path, fmt: str, predictor: Predictor) -> None:
        self.fmt = fmt
        if fmt == "onnx":
            from imgclf.deploy.onnx_predictor import OnnxPredictor

            self.onnx = OnnxPredictor.load(model_file, max_pixels=predictor.max_pixels)
            self.load_image = self.onnx.load_image
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation: the format was asked for
                self.module = torch.jit.load(str(model_file), map_location="cpu").eval()
            self.load_image = predictor.load_image

    def probabilities(self, images: Sequence[Any]) -> np.ndarray:
        if self.fmt == "onnx":
            return self.onnx.probabilities([np.asarray(image) for image in images])
        with torch.inference_mode():
            return self.module(torch.stack([torch.as_tensor(np.asarray(i)) for i in images])).numpy()
