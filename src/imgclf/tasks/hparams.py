"""What TensorBoard's HParams tab compares across runs."""

from __future__ import annotations

from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from imgclf.experiment.bookkeeping import is_bookkeeping
from imgclf.sweeps.trial import PRUNED_KEY, parse_spec

HPARAM_KEYS = ("optimizer.lr", "optimizer.weight_decay", "loader.batch_size", "epochs", "dataset.image_size", "seed")
GROUPS = ("model", "optimizer", "scheduler", "loss")


def hparams(cfg: DictConfig, num_parameters: int) -> dict[str, Any]:
    """The group choices (model=..., optimizer=...), the usual numbers, and every value overridden on the
    command line except bookkeeping (what differs across sweep jobs); an Optuna trial's number as ``trial``."""
    values: dict[str, Any] = {"parameters": num_parameters}
    for group in GROUPS:  # without Hydra's choices: the class names
        values[group] = str(OmegaConf.select(cfg, f"{group}._target_", default="")).rsplit(".", 1)[-1]
    overridden: list[str] = []
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        values.update(
            {
                group: str(choice)
                for group, choice in hydra_cfg.runtime.choices.items()
                if not group.startswith("hydra") and choice is not None
            }
        )
        overridden = [
            key
            for key in (o.split("=", 1)[0].lstrip("+~") for o in hydra_cfg.overrides.task)
            if not is_bookkeeping(key)
        ]
    for key in (*HPARAM_KEYS, *overridden):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not OmegaConf.is_config(value):
            values[key] = value
    if cfg.get("sweep_trial"):
        values["trial"] = parse_spec(cfg.sweep_trial)[2]
    return values


def hparam_metrics(cfg: DictConfig) -> list[str]:
    """The scalar tags the HParams tab shows beside the values; an Optuna trial's also says if it was pruned."""
    metrics = list(dict.fromkeys([cfg.monitor, "val/acc", "val/loss", "val/f1"]))
    return [*metrics, PRUNED_KEY] if cfg.get("sweep_trial") else metrics
