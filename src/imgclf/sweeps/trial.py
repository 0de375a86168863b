"""The job's side of an Optuna trial: report each epoch's monitored value and stop when the pruner says so.

The sweeper names the trial in the job's ``sweep_trial`` override as ``<storage url>|<study name>|<number>``;
the job opens the study there, so it works the same in the sweep's process (basic launcher), in a
joblib worker or on another machine that reaches the storage. A pruned trial records the epoch in the
user attribute ``pruned_at_epoch`` and stops like early stopping (its checkpoints are kept); the sweeper
then tells the study that the trial was PRUNED.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from imgclf.errors import ConfigError

log = logging.getLogger(__name__)

PRUNED_KEY = "trial/pruned"  # 1 at the epoch a trial was pruned, else 0: metrics.jsonl, TensorBoard, HParams


def trial_spec(storage: str, study_name: str, number: int) -> str:
    return f"{storage}|{study_name}|{number}"


def parse_spec(spec: str) -> tuple[str, str, int]:
    storage, _, rest = str(spec).rpartition("|")
    storage, _, name = storage.rpartition("|")
    if not storage or not name or not rest.isdigit():
        raise ConfigError(
            f"sweep_trial={spec!r} is not <storage url>|<study name>|<trial number>; it is set by the "
            "Optuna sweeper (python train.py -m hparams_search=<name>): leave it null"
        )
    return storage, name, int(rest)


class TrialReporter:
    """``after_epoch`` of the training loop for an Optuna trial.

    Args:
        spec: ``<storage url>|<study name>|<trial number>`` (the ``sweep_trial`` override).
        monitor: the metric reported each epoch (``val/acc``); the study knows its direction.
        pruner: the sweep's pruner (``hydra.sweeper.pruner``), which decides from the reported values.
    """

    def __init__(self, spec: str, monitor: str, pruner: Any) -> None:
        import optuna

        from imgclf.sweeps.study import rdb_storage

        url, name, self.number = parse_spec(spec)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = rdb_storage(url)
        try:
            study_id = storage.get_study_id_from_name(name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.number)
        except KeyError as exc:
            raise ConfigError(f"sweep_trial: {exc.args[0] if exc.args else exc} in {url}") from None
        self.trial = optuna.trial.Trial(optuna.load_study(study_name=name, storage=storage, pruner=pruner), trial_id)
        self.monitor = monitor

    def __call__(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Report ``metrics[monitor]`` of ``epoch``; True (stop training) when the trial is pruned."""
        from optuna.exceptions import UpdateFinishedTrialError

        value = float(metrics[self.monitor])
        try:
            self.trial.report(value if math.isfinite(value) else float("nan"), step=epoch)
        except UpdateFinishedTrialError:  # a new run of the sweep marked it failed: this process outlived its sweep
            log.warning(
                "trial %d was closed in the study while it trained (the sweep that started it stopped): stopping it",
                self.number,
            )
            return True
        pruned = self.trial.should_prune()
        metrics[PRUNED_KEY] = float(pruned)
        if pruned:
            self.trial.set_user_attr("pruned_at_epoch", epoch)
            log.info(
                "trial %d pruned after epoch %d (%s %.4f): it stops here like early stopping",
                self.number,
                epoch,
                self.monitor,
                value,
            )
        return pruned
