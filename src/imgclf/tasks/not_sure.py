"""``abstain.*``: the "not sure" thresholds chosen on the experiment's val split, after the temperature (with
``calibrate=true``), stored in the checkpoint as a plain :class:`imgclf.abstain.Abstain` record; with
``abstain.ood=knn`` also the bank of training images' features the kNN score compares with (``payload["ood_bank"]``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from imgclf.abstain import Abstain
from imgclf.data.folder import Splits
from imgclf.models.classifier import Classifier, with_tta
from imgclf.models.ood_tap import OodTap, unit_rows
from imgclf.reporting.outputs import Outputs
from imgclf.reporting.selective import choose_threshold, ood_threshold

log = logging.getLogger(__name__)

# runs a model over a split's images and returns its Outputs: collect(model, split_name, splits)
Collect = Callable[[torch.nn.Module, str, Splits], Outputs]


def wanted(cfg: DictConfig) -> bool:
    """Whether the config asks for a threshold (a config saved before ``abstain`` existed asks for none)."""
    section = cfg.get("abstain")
    return section is not None and (section.goal is not None or section.ood is not None)


def bank_sample(splits: Splits, size: int, seed: int) -> Splits:
    """``splits`` with its train split cut to a seeded sample of at most ``size`` images (in folder order)."""
    train = list(splits.samples.get("train", []))
    if len(train) > size:
        keep = sorted(random.Random(seed).sample(range(len(train)), size))
        train = [train[i] for i in keep]
    return replace(splits, samples={**splits.samples, "train": train})


def knn_bank(cfg: DictConfig, model: Classifier, splits: Splits, collect: Collect) -> torch.Tensor:
    """(N, D) float16 unit-length features of at most ``abstain.ood_bank`` training images, evaluated as val is
    (``cfg.tta``: the mean features of an image and its mirror image)."""
    sample = bank_sample(splits, int(cfg.abstain.ood_bank), int(cfg.seed))
    started = time.perf_counter()
    evaluated = with_tta(model, cfg.tta)
    with torch.inference_mode(), OodTap(evaluated, "features") as tap:
        collect(evaluated, "train", sample)
    bank = unit_rows(tap.scores()).half()
    log.info(
        "abstain.ood=knn: features of %d training images kept to compare with (%d values each, %.1f MB, %.0f s)",
        len(bank),
        bank.shape[1],
        bank.numel() * 2 / 1e6,
        time.perf_counter() - started,
    )
    return bank


def val_scores(
    cfg: DictConfig, model: Classifier, splits: Splits, collect: Collect, temperature: float
) -> tuple[Outputs, np.ndarray, torch.Tensor | None]:
    """The val outputs as test.py and an export evaluate them (with ``cfg.tta``), their out-of-distribution scores
    (``abstain.ood``; energy scores when it is null, unused) in the same pass, and the kNN bank (None unless
    ``abstain.ood=knn``)."""
    kind = cfg.abstain.ood or "energy"
    bank = knn_bank(cfg, model, splits, collect) if kind == "knn" else None
    evaluated = with_tta(model, cfg.tta)
    tap = OodTap(evaluated, kind, temperature=temperature, bank=bank, k=int(cfg.abstain.ood_k))
    with torch.inference_mode(), tap:
        found = collect(evaluated, "val", splits)
    return found, tap.scores().double().numpy(), bank


def fit(cfg: DictConfig, found: Outputs, scores: np.ndarray, temperature: float) -> dict[str, Any]:
    """The :class:`Abstain` record (as plain data) for ``cfg.abstain`` on val's outputs ``found`` and their
    out-of-distribution ``scores``."""
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
    cut = ood_threshold(scores, keep) if keep is not None else None
    record = Abstain(
        goal=section.goal,
        target=float(section.target) if section.goal is not None else None,
        threshold=threshold,
        ood=section.ood,
        ood_keep=keep,
        ood_threshold=cut,
        ood_k=int(section.ood_k) if section.ood == "knn" else None,
        temperature=float(temperature),
        tta=str(cfg.tta),
        val=val,
        reason="; ".join(reasons) or None,
    )
    log.info("not sure: %s", record.describe())
    return record.to_dict()
