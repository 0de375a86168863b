"""The model card of an export: ``model_card.json`` (for programs) and ``model_card.md`` (for people).

What the model is for and how far to trust it: classes, input, the test report's headline numbers with their
intervals, calibration, the data and the training setup, library versions, and the SHA-256 of the model file
so that a copy can be checked against the card.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

from imgclf.atomic import write_text_atomic
from imgclf.data.splits_file import read_splits
from imgclf.deploy.metadata import ModelInfo
from imgclf.errors import DataError

HEADLINE = ("accuracy", "f1", "precision", "recall", "top_k_accuracy", "ece", "nll")
LIBRARIES = ("torch", "torchvision", "onnx", "onnxscript", "onnxruntime", "numpy", "pillow", "imgclf")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_card(
    folder: Path,
    model_file: Path,
    info: ModelInfo,
    payload: dict[str, Any],
    checkpoint: Path,
    experiment: Path,
    parity: dict[str, Any],
    fmt: str,
) -> dict[str, Any]:
    """Write ``model_card.json`` and ``model_card.md`` into ``folder``; returns the JSON record."""
    config = payload.get("config") or {}
    card = {
        "model_file": {
            "name": model_file.name,
            "format": fmt,
            "exporter": parity.get("exporter"),
            "sha256": sha256_file(model_file),
            "bytes": model_file.stat().st_size,
        },
        "checkpoint": {
            "path": str(checkpoint),
            "sha256": sha256_file(checkpoint),
            "epoch": payload.get("epochs"),
            "experiment": payload.get("experiment"),
        },
        "classes": info.classes,
        "display_names": info.display_names,
        "input": {
            "dtype": "uint8",
            "layout": "NCHW (batch, RGB, height, width); the batch size is free",
            "image_size": info.image_size,
            "decode_size": info.decode_size,
            "resize": info.resize,
            "center_crop": info.decode_size != info.image_size,
            "mean": info.mean,
            "std": info.std,
            "max_pixels": info.max_pixels,
        },
        "output": "float32 (batch, classes) probabilities: normalization, temperature and softmax are inside the model",
        "tta": info.tta,
        "calibration": calibration(payload),
        "evaluation": evaluation(experiment, checkpoint, info.tta),
        "data": data_record(config, experiment, info.classes),
        "training": training_record(config, payload),
        "parity": {
            k: parity.get(k)
            for k in ("samples", "val_images", "random_images", "max_abs_diff", "argmax_agreement", "tolerance")
        },
        "versions": versions(),
    }
    if "int8" in parity:
        card["int8"] = int8_record(model_file.with_name(parity["int8"]["file"]), parity["int8"])
    write_text_atomic(folder / "model_card.json", json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(folder / "model_card.md", markdown(card))
    return card


def int8_record(path: Path, gate: dict[str, Any]) -> dict[str, Any]:
    """The INT8 twin of the model file: what it is, how it was quantized, and its gate against fp32 on val."""
    keys = ("val_images", "argmax_agreement", "fp32_accuracy", "int8_accuracy", "accuracy_drop", "max_abs_diff")
    return {
        "name": path.name,
        "precision": "int8",
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "quantization": gate.get("quantization"),
        "gate": {"min_agreement": gate.get("min_agreement"), "max_accuracy_drop": gate.get("max_accuracy_drop")},
        "parity": {k: gate.get(k) for k in keys},
    }


def int8_markdown(int8: dict[str, Any]) -> list[str]:
    q, p, g = int8["quantization"] or {}, int8["parity"], int8["gate"]
    return [
        "## INT8 model",
        "",
        f"`{int8['name']}` ({int8['bytes']:,} bytes, SHA-256 `{int8['sha256']}`): the same model statically "
        f"quantized to INT8 for CPUs ({q.get('format')}; weights {q.get('weights')}; activations "
        f"{q.get('activations')} on {q.get('calibration_images')} {q.get('calibration_split')} images). Same input, "
        "output and metadata as the fp32 file.",
        "",
        f"Against the fp32 model on {p['val_images']} val images: top class agrees on {p['argmax_agreement']:.1%} "
        f"(at least {g['min_agreement']:.1%} required), accuracy {p['int8_accuracy']:.1%} against "
        f"{p['fp32_accuracy']:.1%} (at most {g['max_accuracy_drop'] * 100:g} points lower allowed), max |difference| "
        f"of a probability {p['max_abs_diff']:.3f}.",
        "",
    ]


def calibration(payload: dict[str, Any]) -> dict[str, Any]:
    record = payload.get("calibration") or {}
    if "temperature" not in payload:
        return {"temperature": 1.0, "calibrated": False}
    return {"temperature": float(payload["temperature"]), "calibrated": True, **record}


def evaluation(experiment: Path, checkpoint: Path, tta: str) -> dict[str, Any]:
    """The headline of ``test/metrics.json`` when it reports this very checkpoint, else how to make one."""
    path = experiment / "test" / "metrics.json"
    hint = (
        f"not evaluated: run python test.py -cn=<the recipe it was trained with> experiment={experiment.name} "
        f"(its overrides: {experiment / '.hydra' / 'train' / 'overrides.yaml'}), then export again"
    )
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {"evaluated": False, "note": hint}
    if not isinstance(metrics, dict) or not _same_file(metrics.get("checkpoint"), checkpoint):
        return {"evaluated": False, "note": f"{path} reports another checkpoint ({metrics.get('checkpoint')}); " + hint}
    head = {k: metrics[k] for k in HEADLINE if k in metrics}
    head.update({f"{k}_ci": metrics[f"{k}_ci"] for k in HEADLINE if f"{k}_ci" in metrics})
    record = {
        "evaluated": True,
        "report": str(path),
        "split": metrics.get("split"),
        "samples": metrics.get("samples"),
        "ci_level": metrics.get("ci_level"),
        "tta": metrics.get("tta", "none"),
        "metrics": head,
    }
    if record["tta"] != tta:
        record["note"] = f"the report evaluated tta={record['tta']}; this export has tta={tta}"
    return record


def _same_file(recorded: Any, checkpoint: Path) -> bool:
    try:
        return recorded is not None and Path(recorded).resolve() == checkpoint.resolve()
    except OSError:
        return False


def data_record(config: dict[str, Any], experiment: Path, classes: list[str]) -> dict[str, Any]:
    dataset = config.get("dataset") or {}
    counts: dict[str, int] = {}
    try:
        splits, _ = read_splits(experiment / "splits.csv", classes, missing_ok=True)
        counts = {split: len(samples) for split, samples in splits.samples.items()}
        per_class = Counter(classes[label] for _, label in splits.samples.get("train", []))
    except (OSError, DataError):
        per_class = Counter()
    return {
        "dataset": dataset.get("_target_"),
        "root": dataset.get("root") or dataset.get("name"),
        "split_counts": counts,
        "train_per_class": dict(per_class),
    }


def training_record(config: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": config.get("model"),
        "optimizer": config.get("optimizer"),
        "scheduler": config.get("scheduler"),
        "epochs": config.get("epochs"),
        "best_epoch": (payload.get("state") or {}).get("best_epoch"),
        "monitor": payload.get("monitor"),
        "parameters": payload.get("num_parameters"),
        "trained_with": payload.get("versions"),
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def markdown(card: dict[str, Any]) -> str:
    """The card for people: the same facts as the JSON, in sections."""
    names = card["display_names"]
    inp, cal, ev, data, train = card["input"], card["calibration"], card["evaluation"], card["data"], card["training"]
    lines = [
        f"# Model card: {card['checkpoint']['experiment'] or Path(card['checkpoint']['path']).parent.name}",
        "",
        f"`{card['model_file']['name']}` ({card['model_file']['format']}, exporter "
        f"{card['model_file']['exporter']}, {card['model_file']['bytes']:,} bytes)  ",
        f"SHA-256 `{card['model_file']['sha256']}`  ",
        f"from `{card['checkpoint']['path']}` (SHA-256 `{card['checkpoint']['sha256'][:16]}...`)",
        "",
        f"## Classes ({len(card['classes'])})",
        "",
    ]
    lines += [f"- {c}" + (f": {names[c]}" if c in names else "") for c in card["classes"]]
    lines += [
        "",
        "## Input",
        "",
        f"uint8 RGB, NCHW, {inp['image_size']}x{inp['image_size']}: each file decoded (EXIF rotation applied) "
        f"to a {inp['decode_size']}x{inp['decode_size']} square ({inp['resize']})"
        + (f" and centre-cropped to {inp['image_size']}" if inp["center_crop"] else "")
        + "; "
        f"normalized inside the model with mean {inp['mean']} and std {inp['std']}. Images that decode to "
        f"more than {inp['max_pixels']:,} pixels are refused. Output: {card['output']}. "
        f"Test-time augmentation: {card['tta']}.",
        "",
        "## Evaluation",
        "",
    ]
    if ev["evaluated"]:
        level = f"{ev['ci_level']:.0%} " if isinstance(ev.get("ci_level"), (int, float)) else ""
        lines += [
            f"On the {ev['split']} split ({ev['samples']} images, `{ev['report']}`):",
            "",
            f"| metric | value | {level}interval |",
            "|---|---|---|",
        ]
        for key, value in ev["metrics"].items():
            if key.endswith("_ci"):
                continue
            ci = ev["metrics"].get(f"{key}_ci")
            lines.append(f"| {key} | {value:.4f} | " + (f"{ci[0]:.4f} - {ci[1]:.4f}" if ci else "") + " |")
        lines += ["", ev["note"]] if "note" in ev else []
    else:
        lines.append(ev["note"])
    lines += ["", "## Calibration", ""]
    lines.append(
        f"temperature {cal['temperature']:.4g}"
        + (
            f", fitted on {cal.get('samples')} {cal.get('split')} images: NLL {cal['nll_before']:.4f} -> "
            f"{cal['nll_after']:.4f}"
            if "nll_before" in cal
            else ""
            if cal["calibrated"]
            else " (not calibrated)"
        )
    )
    lines += [
        "",
        "## Data",
        "",
        f"`{data['root']}` ({data['dataset']}); images per split: "
        + (", ".join(f"{k} {v}" for k, v in data["split_counts"].items()) or "unknown"),
    ]
    model = train["model"] or {}
    optimizer = train["optimizer"] or {}
    size = f" ({train['parameters']:,} parameters)" if isinstance(train["parameters"], int) else ""
    lines += [
        "",
        "## Training",
        "",
        f"model `{model.get('_target_')}`{size}, optimizer `{optimizer.get('_target_')}` "
        f"(lr {optimizer.get('lr')}), {train['epochs']} epochs (best epoch {train['best_epoch']}, "
        f"monitored {train['monitor']}).",
        "",
        "```json",
        json.dumps({"model": model, "optimizer": optimizer}, indent=2),
        "```",
        "",
        "## Parity with PyTorch",
        "",
        f"{card['parity']['samples']} samples ({card['parity']['val_images']} val images, "
        f"{card['parity']['random_images']} random): max |difference| of a probability "
        f"{card['parity']['max_abs_diff']:.2e} (tolerance {card['parity']['tolerance']:g}), top-class "
        f"agreement {card['parity']['argmax_agreement']:.0%}.",
        "",
        *(int8_markdown(card["int8"]) if "int8" in card else []),
        "## Versions",
        "",
        ", ".join(f"{k} {v}" for k, v in card["versions"].items() if v),
        "",
    ]
    return "\n".join(lines)
