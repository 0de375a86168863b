"""What resuming may do: whether a run is finished, and which changed settings forbid continuing it."""

from __future__ import annotations

import logging
from typing import Any

from imgclf.errors import ExperimentError

log = logging.getLogger(__name__)


def is_finished(payload: dict[str, Any], epochs: int) -> bool:
    state = payload["state"]
    return state.get("stopped_early", False) or (state["epoch"] >= epochs and not state["step"])


STRUCTURAL_KEYS = ("model", "dataset.image_size", "dataset.resize", "dataset.root", "dataset.mean", "dataset.std")
# what a setting meant in configs saved before it existed (checkpoints from before dataset.resize squashed)
OLD_DEFAULTS = {"dataset.resize": "squash"}
WARNED_KEYS = ("epochs", "optimizer", "scheduler", "loss", "loader.batch_size", "seed")


def compare_configs(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Differences that forbid resuming, and differences that only deserve a warning."""
    def get(cfg: dict[str, Any], dotted: str) -> Any:
        value: Any = cfg
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return OLD_DEFAULTS.get(dotted) if value is None else value

    def diff(keys: tuple[str, ...]) -> list[str]:
        return [f"{k}: {get(saved, k)!r} -> {get(current, k)!r}" for k in keys if get(saved, k) != get(current, k)]

    return diff(STRUCTURAL_KEYS), diff(WARNED_KEYS)


def check_resumable(payload: dict[str, Any], config: dict[str, Any], classes: list[str]) -> None:
    """Refuse to resume when the model, data or classes changed; warn about other changes.

    Args:
        payload: the checkpoint to resume from.
        config: the current resolved config, as plain data.
        classes: the class list found in the data now.
    """
    refused, warned = compare_configs(payload["config"], config)
    if list(payload["class_names"]) != classes:
        refused.append(f"classes: {payload['class_names']} -> {classes}")
    if refused:
        raise ExperimentError("cannot resume: these settings differ from the checkpoint's:\n  "
                              + "\n  ".join(refused) + "\nuse experiment=<new name> or overwrite=true")
    for change in warned:
        log.warning("resuming with a changed setting: %s", change)
