"""The sweeper's config, registered with Hydra's ConfigStore: ``hydra/sweeper: imgclf_optuna``, with
the option groups ``hydra/sweeper/sampler`` (tpe, random, grid) and ``hydra/sweeper/pruner`` (median,
hyperband, threshold, none). Every sampler and pruner is a ``_target_`` node: any Optuna sampler or
pruner can be named in YAML."""

# no `from __future__ import annotations`: Hydra loads plugin modules outside sys.modules, where
# dataclasses cannot resolve string annotations
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: Optional[int] = None
    n_startup_trials: int = 10  # random trials before TPE models the results


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: Optional[int] = None


@dataclass
class GridSamplerConf:
    # every combination of the search space once (choice and range only); the space is filled in by the sweeper
    _target_: str = "optuna.samplers.GridSampler"
    _partial_: bool = True
    seed: Optional[int] = None


@dataclass
class MedianPrunerConf:
    # stop a trial whose epoch value is worse than the median of earlier trials at the same epoch
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5  # finished trials before any pruning
    n_warmup_steps: int = 1  # epochs of every trial that are never pruned
    interval_steps: int = 1


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1  # epochs a trial trains at least
    max_resource: Any = "${epochs}"
    reduction_factor: int = 3


@dataclass
class ThresholdPrunerConf:
    # stop a trial whose epoch value leaves [lower, upper] (e.g. val/acc below chance)
    _target_: str = "optuna.pruners.ThresholdPruner"
    lower: Optional[float] = None
    upper: Optional[float] = None
    n_warmup_steps: int = 0


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class ImgclfOptunaSweeperConf:
    _target_: str = "hydra_plugins.imgclf_optuna_sweeper.sweeper.ImgclfOptunaSweeper"
    _recursive_: bool = False  # the sweeper builds the sampler (the grid needs the search space) and the pruner
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])
    sampler: Any = MISSING
    pruner: Any = MISSING
    direction: Optional[str] = None  # maximize | minimize; null: from the config's mode (max | min)
    storage: Optional[str] = None  # null: sqlite:///<hydra.sweep.dir>/study.db, so the study lives with its trials
    study_name: str = "imgclf"
    n_trials: int = 20  # finished (complete or pruned) trials wanted in the study, counting earlier runs
    n_jobs: Optional[int] = None  # trials launched at once; null: the launcher's parallelism (joblib n_jobs)
    params: Dict[str, str] = field(
        default_factory=dict
    )  # key: choice(...) | range(...) | interval(...) | tag(log, interval(...))


def register() -> None:
    store = ConfigStore.instance()
    store.store(group="hydra/sweeper", name="imgclf_optuna", node=ImgclfOptunaSweeperConf, provider="imgclf")
    for name, node in (("tpe", TPESamplerConf), ("random", RandomSamplerConf), ("grid", GridSamplerConf)):
        store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="imgclf")
    for name, node in (
        ("median", MedianPrunerConf),
        ("hyperband", HyperbandPrunerConf),
        ("threshold", ThresholdPrunerConf),
        ("none", NopPrunerConf),
    ):
        store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="imgclf")


register()
