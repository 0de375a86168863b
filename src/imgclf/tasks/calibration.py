"""Temperature scaling of a trained model on the experiment's val split (``calibrate=true``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from imgclf.data.dataset import make_loader
from imgclf.data.folder import Splits
from imgclf.data.preprocessing import Preprocessing
from imgclf.data.splits_file import read_splits
from imgclf.errors import CheckpointError, DataError
from imgclf.experiment.checkpoint import file_stamp, save_atomic
from imgclf.experiment.folder import ExperimentDir
from imgclf.models.classifier import Classifier
from imgclf.models.ood_tap import BANK_KEY
from imgclf.reporting.outputs import Outputs
from imgclf.reporting.statistics import fit_temperature, nll
from imgclf.tasks import build, inputs, not_sure
from imgclf.tasks.failures import evaluation_error
from imgclf.training.validation import collect

log = logging.getLogger(__name__)

LOCK_HINT = (
    "calibrate=true writes the experiment's checkpoint: wait for that run to finish, then run this "
    "command again (or evaluate without calibrate=true)"
)


def outputs(cfg: DictConfig, model: torch.nn.Module, dataset: Any, device: torch.device, desc: str) -> Outputs:
    """The model's logits, labels and mean loss over ``dataset``, in order."""
    loader = make_loader(
        dataset,
        batch_size=cfg.loader.batch_size,
        shuffle=False,
        num_workers=cfg.loader.num_workers,
        timeout=cfg.loader.timeout,
    )
    try:
        return collect(model, loader, build.loss(cfg, device), device=device, progress=cfg.progress, desc=desc)
    except RuntimeError as exc:  # out of memory, a killed or hung loader worker: said with the settings to change
        raise evaluation_error(cfg, exc, device) from None


def calibrate(
    cfg: DictConfig,
    exp: ExperimentDir,
    path: Path,
    payload: dict[str, Any],
    model: Classifier,
    device: torch.device,
    loaded: tuple[int, int, int, str],
) -> dict[str, Any]:
    """Fit a temperature on the experiment's val split and store it in the checkpoint at ``path``;
    returns the checkpoint with it.

    Call it holding the experiment's lock (:data:`LOCK_HINT` says what to do when a training run holds it).
    ``payload`` is the checkpoint as read when ``path`` had the :func:`file_stamp` ``loaded``; it is written back
    only while ``path`` is still that file, so a newer checkpoint saved since it was read is never rolled
    back (docs/reliability.md J5).
    """
    payload = _fit(cfg, exp, payload, model, device)
    if file_stamp(path) != loaded:
        raise CheckpointError(
            f"{path} was replaced after this run read it (a training run saved a newer one?): storing the "
            "temperature in the copy read earlier would roll it back, so nothing was written. Run the same "
            "command again to calibrate the checkpoint that is there now"
        )
    save_atomic(payload, path)
    calibration = payload["calibration"]
    log.info(
        "calibrated on %d val images: temperature %.3f, NLL %.4f -> %.4f; stored in %s",
        calibration["samples"],
        payload["temperature"],
        calibration["nll_before"],
        calibration["nll_after"],
        path,
    )
    return payload


def _fit(
    cfg: DictConfig, exp: ExperimentDir, payload: dict[str, Any], model: Classifier, device: torch.device
) -> dict[str, Any]:
    """``payload`` with the temperature fitted on the experiment's val split and how it was fitted."""
    if not exp.splits.exists():
        raise DataError(f"calibrate=true needs the experiment's val split, listed in {exp.splits}, which is missing")
    classes = list(payload["class_names"])
    splits, _ = read_splits(exp.splits, classes)
    if not splits.samples.get("val"):
        raise DataError(f"calibrate=true: {exp.splits} lists no val images to fit the temperature on")
    prep = Preprocessing.from_checkpoint(payload)
    source = build.source(cfg)
    datasets: dict[tuple[str, int], Any] = {}  # each split's images read once: val serves the temperature and abstain

    def collect(evaluated: torch.nn.Module, split: str, chosen: Splits, desc: str = "abstain on") -> Outputs:
        key = (split, id(chosen))
        if key not in datasets:
            loaded = inputs.load(cfg, source, chosen, (split,), prep)[split]
            datasets[key] = inputs.split_dataset(cfg, loaded, prep, cfg.augmentation.eval)
        return outputs(cfg, evaluated, datasets[key], device, desc=f"{desc} {split}")

    found = collect(model, "val", splits, desc="calibrate on")
    temperature = fit_temperature(found.logits, found.labels)
    before, after = nll(found.logits, found.labels), nll(found.logits, found.labels, temperature)
    fitted = {
        **payload,
        "temperature": temperature,
        "calibration": {"split": "val", "samples": len(found.labels), "nll_before": before, "nll_after": after},
    }
    for key in ("abstain", BANK_KEY):  # thresholds of an earlier temperature would no longer mean what they say
        fitted.pop(key, None)
    if not_sure.wanted(cfg):  # chosen on the calibrated probabilities, as predict will compute them
        found, scores, bank = not_sure.val_scores(cfg, model, splits, collect, temperature)
        fitted["abstain"] = not_sure.fit(cfg, found, scores, temperature)
        if bank is not None:
            fitted[BANK_KEY] = bank
    return fitted


def load_weights(model: torch.nn.Module, payload: dict[str, Any], path: Path) -> None:
    """load_state_dict with the mismatch explained in terms of classes and layers (never strict=False)."""
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path} does not fit model {type(model.net).__name__} built from this config "
            f"(checkpoint: {len(payload['class_names'])} classes {payload['class_names']}, "
            f"model: {payload['config']['model'].get('_target_')}): {str(exc).splitlines()[0]} "
            "Use the config the checkpoint was trained with."
        ) from exc
