"""The sweep loop: ask a batch of trials, launch them as sweep jobs, tell the study how each ended.

``n_trials`` is the number of finished (complete or pruned) trials the study should hold: running the
same command again continues the study, so a sweep that stopped, or one asked for more trials, runs only
what is missing. Trial ``N`` trains in ``<sweep dir>/trial_N`` (``hydra.sweep.subdir``), a folder no
other trial uses. The job learns its trial from the ``sweep_trial`` override (``<storage>|<study>|<N>``,
see :mod:`imgclf.sweeps.trial`) and reports every epoch there, so the pruner can stop it.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import Trial, TrialState

from imgclf.errors import ConfigError, ExperimentError
from imgclf.experiment.folder import ExperimentLock
from imgclf.sweeps import search_space
from imgclf.sweeps import study as studies
from imgclf.sweeps.trial import trial_spec

log = logging.getLogger(__name__)

RUN_FILES = ("metrics.jsonl", "last.pt", "best.pt")  # a folder with one of these holds a run already


class OptunaSweep:
    """One run of the sweep command.

    Args:
        settings: ``hydra.sweeper`` (sampler, pruner, direction, storage, study_name, n_trials, n_jobs, params).
        config: the composed config of the command (``hydra`` node included).
        hydra_context, launcher: what Hydra gave the sweeper; the launcher runs each batch of jobs.
    """

    def __init__(self, settings: DictConfig, config: DictConfig, hydra_context: HydraContext, launcher: Any) -> None:
        self.settings, self.config, self.hydra_context, self.launcher = settings, config, hydra_context, launcher
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.monitor = str(config.monitor)
        self.direction = settings.direction or {"max": "maximize", "min": "minimize"}[str(config.mode)]
        self.url = studies.storage_url(settings.storage, self.sweep_dir)
        self.groups = {g for g in config.hydra.runtime.choices if not str(g).startswith("hydra")}
        self.failed: list[int] = []

    def run(self, arguments: list[str]) -> None:
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        try:
            with ExperimentLock(self.sweep_dir / ".sweep.lock"):
                self._run(arguments)
        except ExperimentError as exc:
            raise ExperimentError(f"{exc}: another sweep is running in this folder") from None

    def _run(self, arguments: list[str]) -> None:
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")
        space = search_space.parse([f"{k}={v}" for k, v in (self.settings.params or {}).items()] + list(arguments))
        if not space.distributions:
            raise ConfigError(
                "the search space is empty: set hydra.sweeper.params (conf/hparams_search/) or give "
                "key=choice(...) / interval(...) on the command line"
            )
        study = studies.open_study(
            self.url, self.settings.study_name, self.direction, self._sampler(space), instantiate(self.settings.pruner)
        )
        studies.fail_interrupted(study)
        wanted, done = self._wanted(space), studies.finished(study)
        n_jobs = self._n_jobs()
        log.info(
            "Optuna study '%s' in %s (sweep folder %s): %d of n_trials=%d finished, %d to run, %d at a time; %s %s",
            study.study_name,
            self.url,
            self.sweep_dir,
            done,
            wanted,
            max(wanted - done, 0),
            n_jobs,
            self.direction,
            self.monitor,
        )
        to_run = wanted - done
        while to_run > 0:
            batch = min(n_jobs, to_run)
            self._run_batch(study, space, batch)
            to_run -= batch
            self._write(study)
        self._write(study, final=True)
        if self.failed:
            raise ExperimentError(
                f"trial(s) {', '.join(map(str, self.failed))} failed (summary.csv names why); "
                "they are not counted: run the same command again to run new trials in their place"
            )

    def _run_batch(self, study: optuna.Study, space: search_space.SearchSpace, size: int) -> None:
        trials = [study.ask(space.distributions) for _ in range(size)]
        jobs = []
        try:
            for trial in trials:
                jobs.append(self._prepare(study, trial, space))
            first = trials[0].number
            if [t.number for t in trials] != list(range(first, first + size)):
                raise ExperimentError(
                    f"study '{study.study_name}' gave trial numbers {[t.number for t in trials]}: "
                    "another process adds trials to it; run one sweep per study"
                )
            returns = self.launcher.launch(jobs, initial_job_idx=first)
        except BaseException:  # Ctrl-C, SIGTERM (SystemExit) or a bad folder: no trial is left RUNNING
            for trial in trials:
                if study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                    studies.set_attrs(study, trial.number, error=studies.INTERRUPTED)
                    studies.tell(study, trial, state=TrialState.FAIL)
            self._write(study)
            raise
        for trial, result in zip(trials, returns, strict=True):
            self._tell(study, trial, result)

    def _prepare(self, study: optuna.Study, trial: Trial, space: search_space.SearchSpace) -> list[str]:
        """The trial's overrides, checked by composing its config as the launcher will; its folder recorded."""
        params = [search_space.as_override(key, value) for key, value in trial.params.items()]
        overrides = [*space.fixed.values(), *params]
        job = [*overrides, "sweep_trial=" + search_space.quoted(trial_spec(self.url, study.study_name, trial.number))]
        folder = self._job_dir(job, trial.number)
        studies.set_attrs(study, trial.number, params=params, overrides=overrides, dir=str(folder))
        if any((folder / name).exists() for name in RUN_FILES):
            raise ExperimentError(
                f"{folder} already holds a run, but trial {trial.number} of study "
                f"'{study.study_name}' in {self.url} is new: the study was deleted or replaced. Move "
                "the trial folders away, or use a new hydra.sweep.dir"
            )
        return job

    def _job_dir(self, overrides: list[str], number: int) -> Path:
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config):
            config.hydra.job.num = number
        return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)

    def _tell(self, study: optuna.Study, trial: Trial, result: JobReturn) -> None:
        if result.status != JobStatus.COMPLETED:
            exc = result._return_value
            studies.set_attrs(study, trial.number, error=f"{type(exc).__name__}: {exc}"[:500])
            studies.tell(study, trial, state=TrialState.FAIL)
            self.failed.append(trial.number)
            log.error("trial %d failed: %s: %s", trial.number, type(exc).__name__, exc)
            return
        value = result._return_value
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            studies.set_attrs(study, trial.number, error=f"the job returned no finite {self.monitor}: {value!r}")
            studies.tell(study, trial, state=TrialState.FAIL)
            self.failed.append(trial.number)
            return
        studies.set_attrs(study, trial.number, best=float(value))
        if "pruned_at_epoch" in study._storage.get_trial(trial._trial_id).user_attrs:
            studies.tell(study, trial, state=TrialState.PRUNED)
        else:
            studies.tell(study, trial, float(value))

    def _write(self, study: optuna.Study, final: bool = False) -> None:
        studies.write_summary(study, self.sweep_dir, self.monitor)
        best = studies.write_best(
            study, self.sweep_dir, str(self.config.hydra.job.config_name), self.groups, self.monitor, self.url
        )
        if final and best is not None:
            trial = study.best_trial
            log.info(
                "best trial %d: %s = %.4f with %s\n  wrote %s; train it: %s",
                trial.number,
                self.monitor,
                trial.value,
                " ".join(trial.user_attrs.get("params", [])),
                best,
                studies.best_command(self.sweep_dir),
            )
        elif final:
            log.warning("no trial is complete yet, so there is no best.yaml")

    def _wanted(self, space: search_space.SearchSpace) -> int:
        """n_trials, but no more than the grid's points with the grid sampler (each is tried once)."""
        wanted = int(self.settings.n_trials)
        if self.settings.sampler.get("_partial_"):
            points = math.prod(len(values) for values in space.grid().values())
            if points < wanted:
                log.info("the grid has %d points: n_trials=%d becomes %d", points, wanted, points)
            wanted = min(wanted, points)
        return wanted

    def _sampler(self, space: search_space.SearchSpace) -> Any:
        sampler = instantiate(self.settings.sampler)
        if callable(sampler) and not isinstance(sampler, optuna.samplers.BaseSampler):  # _partial_: the grid
            sampler = sampler(search_space=space.grid())
        return sampler

    def _n_jobs(self) -> int:
        """Trials asked per batch: hydra.sweeper.n_jobs, else the launcher's parallelism."""
        if self.settings.n_jobs:
            return int(self.settings.n_jobs)
        launcher = self.config.hydra.launcher
        n = launcher.get("n_jobs") or launcher.get("array_parallelism") or 1
        return int(n) if int(n) > 0 else (os.cpu_count() or 1)
