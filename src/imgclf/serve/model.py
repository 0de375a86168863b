"""The model a server classifies with (a torch checkpoint or an exported ONNX file) and its model card.

Both predictors have the same interface (``classes``, ``display_names``, ``load_image(name, data=...)``,
``probabilities(images)``); their outputs are turned into numpy here so the app never cares which it has.
torch is imported only for a ``.pt`` checkpoint: an ONNX model is served without it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.errors import CheckpointError

log = logging.getLogger(__name__)

CARD_FILE = "model_card.json"  # written beside an exported model; read when present


def load_predictor(path: Path, *, max_pixels: int, device: str = "auto") -> Any:
    """The predictor for a ``.onnx`` export or an imgclf ``.pt`` checkpoint.

    Raises:
        CheckpointError: the file is missing or cannot be used as a model; the message says why.
        ConfigError: ``device`` is not available.
    """
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no such model file; pass a best.pt checkpoint, a model.onnx export, or --experiment NAME"
        )
    if path.suffix.lower() == ".onnx":
        from imgclf.deploy.onnx_predictor import OnnxPredictor

        return OnnxPredictor.load(path, max_pixels=max_pixels, device=device)
    from imgclf.inference import Predictor  # torch: only for a checkpoint

    return Predictor.load(path, device=device, max_pixels=max_pixels)


def probabilities(predictor: Any, images: list[Any]) -> np.ndarray:
    """(B, C) float32 probabilities from either predictor (a torch tensor on the CPU or a numpy array)."""
    out = predictor.probabilities(images)
    return np.asarray(out.numpy() if hasattr(out, "numpy") else out, dtype=np.float32)


def top_k(row: np.ndarray, classes: list[str], names: Mapping[str, str], k: int) -> list[dict[str, Any]]:
    """The ``k`` most probable classes of one image: ``[{"class", "name", "probability"}, ...]``, most probable first."""
    order = np.argsort(-row, kind="stable")[:k]
    return [
        {"class": classes[i], "name": names.get(classes[i], classes[i]), "probability": float(row[i])} for i in order
    ]


def model_card(predictor: Any, path: Path) -> dict[str, Any]:
    """What the page's headline says about the model: name, classes and, when known, test accuracy.

    ``model_card.json`` beside the model file (``imgclf-export`` writes one) wins where it says something; the card is
    derived from the model itself and, for a checkpoint in an experiment folder, from the experiment's
    ``test/metrics.json`` when that report is of this very checkpoint file (``test.py ckpt=...`` reports of
    other checkpoints go to other folders). No server path is put in it: only file names.
    """
    card: dict[str, Any] = {
        "model": path.parent.name if path.suffix.lower() == ".pt" else path.stem,
        "file": path.name,
        "architecture": _architecture(predictor),
        "classes": list(predictor.classes),
        "display_names": dict(predictor.display_names),
        "image_size": int(predictor.image_size),
        "tta": str(getattr(predictor, "tta", "none")),
        "test": _test_metrics(path.parent / "test" / "metrics.json", path),
    }
    beside = _read_json(path.parent / CARD_FILE)
    if beside is not None:
        card.update(_from_card_file(beside))
    return card


def _architecture(predictor: Any) -> str | None:
    """The network's class name (a torch model, under its TTA wrapper); None for an ONNX export (its card says)."""
    module = getattr(predictor, "model", None)
    while module is not None and not hasattr(module, "net"):
        module = getattr(module, "model", None)
    if module is not None:
        return type(module.net).__name__
    return None


def _test_metrics(file: Path, model_file: Path) -> dict[str, Any] | None:
    """Test accuracy (and its interval) from an experiment's report, if the report is of ``model_file``."""
    metrics = _read_json(file)
    if metrics is None or "accuracy" not in metrics:
        return None
    if Path(str(metrics.get("checkpoint", ""))).name != model_file.name:
        return None  # the report of another checkpoint of the experiment
    return _test_record(metrics)


def _test_record(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = {"accuracy": float(metrics["accuracy"])}
        interval = metrics.get("accuracy_ci")
        if isinstance(interval, (list, tuple)) and len(interval) == 2:
            record["accuracy_ci"] = [float(interval[0]), float(interval[1])]
            record["ci_level"] = float(metrics.get("ci_level") or 0.95)
        if metrics.get("samples") is not None:
            record["samples"] = int(metrics["samples"])
        if metrics.get("split") is not None:
            record["split"] = str(metrics["split"])
        return record
    except (KeyError, TypeError, ValueError):
        return None


def _from_card_file(card_file: Mapping[str, Any]) -> dict[str, Any]:
    """What the headline takes from an export's ``model_card.json`` (``imgclf.deploy.model_card``): the
    experiment's name, the architecture, TTA and the evaluation of the exported checkpoint; the classes stay
    the model file's own."""
    found: dict[str, Any] = {}
    checkpoint = card_file.get("checkpoint")
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("experiment"), str) and checkpoint["experiment"]:
        found["model"] = checkpoint["experiment"]
    training = card_file.get("training")
    target = (
        training.get("model", {}).get("_target_")
        if isinstance(training, Mapping) and isinstance(training.get("model"), Mapping)
        else None
    )
    if isinstance(target, str):
        found["architecture"] = target.rsplit(".", 1)[-1]
    if isinstance(card_file.get("tta"), str):
        found["tta"] = card_file["tta"]
    evaluation = card_file.get("evaluation")
    if (
        isinstance(evaluation, Mapping)
        and evaluation.get("evaluated")
        and isinstance(evaluation.get("metrics"), Mapping)
    ):
        record = _test_record({**evaluation, **evaluation["metrics"]})
        if record is not None:
            found["test"] = record
    elif isinstance(evaluation, Mapping):
        found["test"] = None  # the card says the exported checkpoint was not evaluated
    return found


def _read_json(file: Path) -> dict[str, Any] | None:
    """A JSON object from ``file``; None (with a warning when it exists) if it cannot be read."""
    if not file.is_file():
        return None
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s cannot be read (%s); the page's model card leaves it out", file, exc)
        return None
    return value if isinstance(value, dict) else None
