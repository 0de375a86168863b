"""A frozen, cached backbone under ``trainer.budget``: fewer backbones or a smaller size when the configured ones
would not fit (the ``transfer`` recipe's step-down).

Its features are computed once per image before the head trains, so the run knows the cost up front: the
network of each choice is timed on random images of its input size (:mod:`imgclf.training.pass_cost`), and the
first choice whose feature pass fits :data:`FEATURE_SHARE` of the budget left is kept. The ladder: the configured
backbones at their size; at their native size (``dataset.native_scale`` 1); then the ensemble's last backbone
dropped, one at a time (``model.variant``). The choice is written into the config, so the saved config, the
checkpoint and a resumed run say what ran; a resumed run keeps its checkpoint's choice.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from imgclf.data.folder import Splits
from imgclf.errors import ConfigError
from imgclf.experiment.folder import ExperimentDir
from imgclf.experiment.resume import resumed_config
from imgclf.tasks import build
from imgclf.training.distributed import Distributed
from imgclf.training.onnx_twin import chosen_engine
from imgclf.training.pass_cost import seconds_per_image

log = logging.getLogger(__name__)

FEATURE_SHARE = 0.6  # of the budget left at planning time; the head's epochs, validation and checkpoints get the rest


@dataclass(frozen=True)
class Choice:
    """Backbones (``model.variant``; None: the model has no such key) and ``dataset.native_scale``."""

    variant: list[str] | None
    native_scale: float

    def describe(self, image_size: int) -> str:
        names = "+".join(self.variant) if self.variant else "the backbone"
        return f"{names} at {image_size} px"


def applies(cfg: DictConfig) -> bool:
    """A budget, and a frozen backbone whose features are cached: the feature pass is planned before it runs."""
    return (
        cfg.trainer.get("budget") is not None
        and cfg.model.get("freeze") == "backbone"
        and cfg.model.get("unfreeze_at_epoch") is None
        and bool(cfg.trainer.cache_features)
    )


def ladder(cfg: DictConfig) -> list[Choice]:
    """The choices from the configured one down: native size first, then one backbone fewer at a time."""
    variant = cfg.model.get("variant")
    names = list(variant) if isinstance(variant, ListConfig | list) else None
    scale = float(cfg.dataset.get("native_scale", 1.0))
    choices = [Choice(names, scale)]
    if scale > 1:
        choices.append(Choice(names, 1.0))
    while names is not None and len(names) > 1:
        names = names[:-1]
        choices.append(Choice(names, 1.0))
    return choices


def fit(
    cfg: DictConfig,
    exp: ExperimentDir,
    scanned: Splits,
    sizes: Sequence[Any],
    *,
    started: float,
    device: torch.device,
    group: Distributed,
    measure: Callable[[DictConfig, int, str], float] | None = None,
) -> None:
    """Write into ``cfg`` the first choice of :func:`ladder` whose feature pass fits the budget (a resumed run: its
    checkpoint's). ``measure(cfg, image_size, engine)`` gives seconds per image of the network ``cfg`` describes.

    Raises:
        ConfigError: not even the smallest choice fits; the message says the smallest budget that would.
    """
    if not applies(cfg):
        return
    resumed = resumed_config(exp, str(cfg.get("resume", "auto")), bool(cfg.get("overwrite")))
    if resumed is not None:  # a resumed run trains what its checkpoint holds, whatever this machine's speed now
        _apply(cfg, _recorded(cfg, resumed))
        return
    choices = ladder(cfg)
    engine = chosen_engine(cfg.trainer.frozen_engine, device)
    index = 0
    if group.is_main:  # rank 0 measures and decides; every rank trains the same network
        index = _choose(cfg, choices, scanned, sizes, started, measure or _measurer(cfg, device), engine)
    _apply(cfg, choices[group.broadcast(index)])


def follow(cfg: DictConfig, config: dict[str, Any]) -> None:
    """Build what a budgeted run chose (test.py): the backbones and native scale of the checkpoint's ``config``, when
    that run had a budget to choose them by; another run's config is left as the user composed it."""
    if applies(OmegaConf.create(config)):
        _apply(cfg, _recorded(cfg, config))


def _choose(
    cfg: DictConfig,
    choices: list[Choice],
    scanned: Splits,
    sizes: Sequence[Any],
    started: float,
    measure: Callable[[DictConfig, int, str], float],
    engine: str,
) -> int:
    """The first choice that fits, walking down the ladder; each is timed on PyTorch (a few images, seconds), and
    with onnxruntime the smallest is also timed there (its export is the cheapest, and the run reuses it when it is
    chosen): the others' onnxruntime time is their PyTorch time over the speed-up measured on it."""
    counts = scanned.counts()
    passes = counts.get("train", 0) * int(cfg.trainer.get("feature_views", 1)) + counts.get("val", 0)
    trials = [_with(cfg, choice) for choice in choices]
    sized = [_size(trial, sizes) for trial in trials]
    on_torch: dict[int, float] = {}  # seconds per image on PyTorch, by choice: each timed once

    def torch_time(index: int) -> float:
        if index not in on_torch:
            on_torch[index] = measure(trials[index], sized[index], "torch")
        return on_torch[index]

    speedup, note = 1.0, "on PyTorch"
    if engine != "torch":
        fast = measure(trials[-1], sized[-1], engine)  # first: it exports the backbone the run may reuse
        speedup = torch_time(len(trials) - 1) / fast
        note = f"on {engine}: {speedup:.1f}x PyTorch on the smallest, measured"
    budget = float(cfg.trainer.budget) * 60
    lines, allowed, left, seconds = [], 0.0, 0.0, 0.0
    for index, (choice, size) in enumerate(zip(choices, sized, strict=True)):
        if index and (choice.variant, size) == (choices[index - 1].variant, sized[index - 1]):
            continue  # the native size is the size already timed (small images)
        seconds = torch_time(index) / speedup * passes
        left = budget - (time.perf_counter() - started)
        allowed = FEATURE_SHARE * left
        lines.append(f"{choice.describe(size)}: {seconds / max(passes, 1) * 1000:.0f} ms per image, {seconds:.0f} s")
        if seconds <= allowed:
            log.info(
                "trainer.budget=%g min, %.0f s left: the frozen features of %d image passes may take %.0f s (%d%%); "
                "measured (%s):\n  %s\nchose %s (%s)",
                cfg.trainer.budget,
                left,
                passes,
                allowed,
                round(FEATURE_SHARE * 100),
                note,
                "\n  ".join(lines),
                choice.describe(size),
                "as configured" if index == 0 else f"the choices above it need more than {allowed:.0f} s",
            )
            return index
    needed = math.ceil((budget - left + seconds / FEATURE_SHARE) / 60 * 10) / 10
    raise ConfigError(
        f"trainer.budget={cfg.trainer.budget:g} is too small for the frozen features of {passes} image passes: even "
        f"{choices[-1].describe(sized[-1])} takes {seconds:.0f} s ({note}), more than the {allowed:.0f} s "
        f"({round(FEATURE_SHARE * 100)}% of the {left:.0f} s left) the features may take. Use "
        f"trainer.budget={needed:g} or more, fewer images, or trainer.budget=null"
    )


def _measurer(cfg: DictConfig, device: torch.device) -> Callable[[DictConfig, int, str], float]:
    """Times a choice's network as the run computes its features (eval, no gradients, its memory layout)."""
    folder = Path(cfg.paths.cache).expanduser() / "onnx" if cfg.loader.cache == "disk" else None

    def measure(trial: DictConfig, image_size: int, engine: str) -> float:
        return seconds_per_image(
            build.network(trial),
            image_size,
            engine=engine,
            device=device,
            folder=folder,
            channels_last=bool(trial.trainer.channels_last),
        )

    return measure


def _with(cfg: DictConfig, choice: Choice) -> DictConfig:
    trial = copy.deepcopy(cfg)
    _apply(trial, choice)
    return trial


def _size(cfg: DictConfig, sizes: Sequence[Any]) -> int:
    return build.image_size(cfg, build.native_size(cfg), sizes).image_size


def _apply(cfg: DictConfig, choice: Choice) -> None:
    if choice.variant is not None:
        cfg.model.variant = list(choice.variant) if len(choice.variant) > 1 else choice.variant[0]
    if "native_scale" in cfg.dataset:
        cfg.dataset.native_scale = choice.native_scale


def _recorded(cfg: DictConfig, config: dict[str, Any]) -> Choice:
    variant = config.get("model", {}).get("variant", cfg.model.get("variant"))
    names = None if variant is None else ([variant] if isinstance(variant, str) else list(variant))
    scale = config.get("dataset", {}).get("native_scale", cfg.dataset.get("native_scale", 1.0))
    return Choice(names, float(scale))
