"""``abstain.*``: the "not sure" thresholds chosen on the experiment's val split, after the temperature (with
``calibrate=true``), stored in the checkpoint as a plain :class:`imgclf.abstain.Abstain` record."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from imgclf.abstain import Abstain
from imgclf.models.classifier import Classifier, with_tta
from imgclf.models.energy_tap import EnergyTap
from imgclf.reporting.outputs import Outputs
from imgclf.reporting.selective import choose_threshold, ood_threshold

log = logging.getLogger(__name__)


def wanted(cfg: DictConfig) -> bool:
    """Whether the config asks for a threshold (a config saved before ``abstain`` existed asks for none)."""
    section = cfg.get("abstain")
    return section is not None and (section.goal is not None or section.ood is not None)


def val_scores(cfg: DictConfig, model: Classifier, collect: Any, temperature: float) -> tuple[Outputs, np.ndarray]:
    """The val outputs as test.py and an export evaluate them (with ``cfg.tta``) and their energy scores, in one
    pass: ``collect(model)`` runs a model over val and returns its :class:`Outputs`."""
    evaluated = with_tta(model, cfg.tta)
    with torch.inference_mode(), EnergyTap(evaluated, temperature) as tap:
        found = collect(evaluated)
    return found, tap.scores().double().numpy()


def fit(cfg: DictConfig, found: Outputs, energy: np.ndarray, temperature: float) -> dict[str, Any]:
    """The :class:`Abstain` record (as plain data) for ``cfg.abstain`` on val's outputs ``found``."""
    section = cfg.abstain
    probs = torch.softmax(found.logits.double() / temperature, dim=1)
    confidence, preds = probs.max(1)
    correct = (preds == found.labels).numpy()
    threshold, val, reasons = None, None, []
    if section.goal is not None:
        choice = choose_threshold(
            confidence.numpy(), correct, section.goal, float(section.target), int(section.min_answered)
        )
        threshold, val = choice.threshold, choice.val_record()
        if choice.reason:
            reasons.append(choice.reason)
            log.warning("abstain.goal=%s: %s; no confidence threshold stored", section.goal, choice.reason)
    keep = float(section.ood_keep) if section.ood is not None else None
    cut = ood_threshold(energy, keep) if keep is not None else None
    record = Abstain(
        goal=section.goal,
        target=float(section.target) if section.goal is not None else None,
        threshold=threshold,
        ood=section.ood,
        ood_keep=keep,
        ood_threshold=cut,
        temperature=float(temperature),
        tta=str(cfg.tta),
        val=val,
        reason="; ".join(reasons) or None,
    )
    log.info("not sure: %s", record.describe())
    return record.to_dict()
