"""The study of a sweep, kept in its folder, and what the sweep writes from it.

The study is the record of the search: every trial's values, state (COMPLETE, PRUNED, FAIL) and user
attributes (``overrides``, ``dir``, ``error``, ``pruned_at_epoch``, ``best``). ``summary.csv`` and
``best.yaml`` are rewritten from it, so they show every trial of every run of the sweep command.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from imgclf.atomic import write_text_atomic
from imgclf.errors import ConfigError
from imgclf.sweeps import summary

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts toward n_trials; a failed trial is run again
STATUS = {
    TrialState.COMPLETE: "COMPLETED",
    TrialState.PRUNED: "PRUNED",
    TrialState.FAIL: "FAILED",
    TrialState.RUNNING: "RUNNING",
    TrialState.WAITING: "WAITING",
}
INTERRUPTED = "interrupted: the sweep stopped while this trial ran; it is not counted and a new trial takes its place"
# overrides of a trial that say how it was started, not what it trains: not carried into best.yaml
NOT_IN_BEST = ("hparams_search", "sweep_trial", "experiment", "resume", "overwrite")


def storage_url(storage: str | None, sweep_dir: Path) -> str:
    """``storage``, or an SQLite file in the sweep folder: the same command finds the same study again."""
    return storage or f"sqlite:///{(sweep_dir / 'study.db').resolve()}"


def rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's database; SQLite waits up to a minute for a lock (parallel jobs report at the same time)."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


def open_study(url: str, name: str, direction: str, sampler: Any, pruner: Any) -> optuna.Study:
    """Create the study, or load it when an earlier run of the sweep made it (same direction only)."""
    study = optuna.create_study(
        storage=rdb_storage(url),
        study_name=name,
        sampler=sampler,
        pruner=pruner,
        direction=direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise ConfigError(
            f"study '{name}' in {url} was made to {study.direction.name.lower()}, not to {direction}: "
            "set hydra.sweeper.study_name=<a new name> (or hydra.sweep.dir=<a new folder>) for a "
            "search in the other direction"
        )
    return study


def trial_id(study: optuna.Study, number: int) -> int:
    storage = study._storage
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def set_attrs(study: optuna.Study, number: int, **attrs: Any) -> None:
    """User attributes of a trial, by number (also of a trial this process did not ask for)."""
    tid = trial_id(study, number)
    for key, value in attrs.items():
        study._storage.set_trial_user_attr(tid, key, value)


def tell(
    study: optuna.Study, trial: optuna.trial.Trial | int, value: float | None = None, state: TrialState | None = None
) -> None:
    """``study.tell``, outside ``study.optimize``: the grid sampler calls ``study.stop()`` when its last point
    is told, which is only allowed inside ``optimize``; the sweep stops by its own count anyway."""
    try:
        study.tell(trial, value, state=state)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


def fail_interrupted(study: optuna.Study) -> list[FrozenTrial]:
    """Mark FAIL the trials a killed sweep left RUNNING (docs/reliability.md H5), so none is counted or run twice.

    Only the sweep that holds the folder's lock calls this, so no live trial is among them."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        set_attrs(study, trial.number, error=INTERRUPTED)
        tell(study, trial.number, state=TrialState.FAIL)
        log.warning(
            "trial %d was left running by a sweep that stopped (%s): marked FAIL, not counted",
            trial.number,
            trial.user_attrs.get("dir", "no folder yet"),
        )
    return stale


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def write_summary(study: optuna.Study, sweep_dir: Path, monitor: str) -> Path:
    """``summary.csv`` from the study: every trial of every run, pruned and failed ones marked."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        best = attrs.get("best", trial.value)
        note = ""
        if trial.state == TrialState.PRUNED:
            last = trial.intermediate_values.get(trial.last_step) if trial.last_step is not None else None
            note = f"pruned after epoch {attrs.get('pruned_at_epoch', trial.last_step)}" + (
                f" ({monitor} {last:.4g})" if isinstance(last, float) else ""
            )
        rows.append(
            {
                "job": trial.number,
                "overrides": " ".join(attrs.get("params", [])),
                "status": STATUS.get(trial.state, trial.state.name),
                "best": f"{best:.6g}" if isinstance(best, float) and math.isfinite(best) else "",
                "error": attrs.get("error", ""),
                "dir": attrs.get("dir", ""),
                "note": note,
            }
        )
    return summary.update(sweep_dir, rows, replace_all=True)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    return study.best_trial if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else None


def write_best(
    study: optuna.Study, sweep_dir: Path, config_name: str, groups: set[str], monitor: str, url: str
) -> Path | None:
    """``best.yaml``: the best complete trial as a primary config that extends ``config_name``, for
    ``python train.py --config-dir <sweep dir> -cn best``. None while no trial is complete."""
    trial = best_trial(study)
    if trial is None:
        return None
    chosen, body = [], OmegaConf.create({"experiment": f"{study.study_name}_best"})
    parsed = OverridesParser.create().parse_overrides(list(trial.user_attrs.get("overrides", [])))
    for override in parsed:
        key = override.get_key_element().lstrip("+")
        if key in NOT_IN_BEST or override.is_delete():
            continue
        if key in groups:
            chosen.append(f"override {key}: {override.get_value_element_as_str()}")
        else:
            OmegaConf.update(body, key, override.value(), force_add=True)
    defaults = "".join(f"  - {item}\n" for item in [config_name, *chosen, "_self_"])
    text = (
        f"# The best trial of Optuna study '{study.study_name}' ({url}): trial {trial.number}, "
        f"{monitor} = {trial.value:.6g}\n# {' '.join(trial.user_attrs.get('params', []))}\n"
        f"# Train it: {best_command(sweep_dir)}\n"
        f"defaults:\n{defaults}\n{OmegaConf.to_yaml(body)}"
    )
    path = sweep_dir / "best.yaml"
    write_text_atomic(path, text)
    return path


def best_command(sweep_dir: Path) -> str:
    return f"python train.py --config-dir {sweep_dir.resolve()} -cn best"
