"""What a training process writes, decided once: rank 0 (or a single process) writes the experiment folder
under its lock, the run log and a sweep trial's reports; every other rank writes nothing and gets stand-ins."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from imgclf.data.prepare import digests_by_path
from imgclf.data.splits_file import write_splits
from imgclf.experiment.checkpoint import file_stamp, load_checkpoint
from imgclf.experiment.folder import ExperimentDir
from imgclf.experiment.run_log import BestFigures, RunLog
from imgclf.experiment.writer import CheckpointWriter
from imgclf.models.classifier import Classifier
from imgclf.reporting import cam
from imgclf.reporting.batches import first_batch_to_tensorboard
from imgclf.tasks import build, inputs, loggers, ranks, sweep
from imgclf.tasks.calibration import calibrate, load_weights
from imgclf.tasks.hparams import hparam_metrics, hparams
from imgclf.training.distributed import Distributed
from imgclf.training.engine import Checkpoints, StepExtras, TrainLoader
from imgclf.training.first_batch import tap_first_batch
from imgclf.training.state import Interrupted, TrainState

log = logging.getLogger(__name__)

AfterEpoch = Any  # sweep.trial_hook's reporter: called with (epoch, metrics), True to stop


class MainWrites:
    """Rank 0, or a single process: everything the run writes."""

    main = True

    def __init__(self, cfg: DictConfig, exp: ExperimentDir) -> None:
        self.cfg, self.exp = cfg, exp
        self.after_epoch: AfterEpoch | None = sweep.trial_hook(cfg)  # an Optuna trial reports each epoch
        self._run_log: RunLog | None = None
        self.loggers = loggers.build(cfg)  # the logger group: TensorBoard, MLflow, CSV
        self.loggers.check()  # a tracking server that does not answer: said now, before any image is read
        self._resuming = False

    def lock(self) -> AbstractContextManager[Any]:
        return self.exp.lock()

    def resume_payload(self) -> dict[str, Any] | None:
        return self.exp.resume_payload(str(self.cfg.resume), overwrite=self.cfg.overwrite)

    def record_start(self, splits: Any, loaded: Any, state: TrainState, payload: dict[str, Any] | None) -> None:
        """Clear what overwrite=true replaces (only now, after every check), and record the splits and the config
        this start runs with."""
        cfg, exp = self.cfg, self.exp
        self._resuming = payload is not None  # the trackers continue the run they recorded
        if cfg.overwrite and payload is None:
            exp.clear()  # only now: the new run's config, model and data have all been checked
        if payload is None or not exp.splits.exists():  # a resumed run keeps the hashes first recorded, so a file
            write_splits(splits, exp.splits, digests_by_path(loaded))  # that changed stays left out (bad_files=skip)
        OmegaConf.save(cfg, exp.config, resolve=True)  # the latest; config_history/ keeps each start's
        exp.record_config(
            OmegaConf.to_container(cfg, resolve=True),
            state.epoch,
            state.step,  # type: ignore[arg-type]
            payload["config"] if payload is not None else None,
        )

    def checkpoints(
        self,
        model: Classifier,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        meta: dict[str, Any],
        extras: StepExtras,
    ) -> Checkpoints:
        return CheckpointWriter(self.exp, model, optimizer, scheduler, meta, extras.scaler, extras.ema)

    def run_log(
        self,
        state: TrainState,
        classes: list[str],
        val_images: Any,
        num_parameters: int,
        group: Distributed,
        model: Classifier,
    ) -> RunLog:
        """metrics.jsonl and TensorBoard (continuing after ``state.epoch``), with the HParams entry of the run; at
        each new best, the class activation maps of the most confident mistakes, unless the run trains on cached
        features (a map runs the whole network backwards: seconds per new best with the transfer backbones, where
        the head trains in seconds; test.py's report draws them once)."""
        cfg = self.cfg
        cams = cfg.report.cams and not cfg.trainer.cache_features
        figures = BestFigures(
            classes,
            lambda i: inputs.picture(val_images, i),
            cfg.report.mistakes,
            cams=cam.CamMaker(model, cfg.report.cam_method) if cams else None,
            cam_count=cfg.report.cams,
        )
        run = loggers.run_info(cfg, self.exp.path, resuming=self._resuming, start_epoch=state.epoch)
        for tracker in self.loggers.trackers:
            tracker.begin(run)  # MLflow: a new run, or the one a resumed training recorded
        run_log = RunLog(
            self.exp.metrics,
            self.exp.tensorboard_dir if self.loggers.tensorboard else None,
            start_epoch=state.epoch,
            figures=figures if cfg.report.figures else None,
            constants={
                "world_size": group.world_size,  # a distributed run says so in every line
                "global_batch_size": cfg.loader.batch_size * group.world_size,
            }
            if group.active
            else None,
            trackers=self.loggers.trackers,
        )
        run_log.hparams(hparams(cfg, num_parameters), hparam_metrics(cfg))
        self._run_log = run_log
        return run_log

    def tap_first_batch(
        self, loader: TrainLoader, extras: StepExtras, classes: list[str], *, resuming: bool
    ) -> tuple[TrainLoader, StepExtras]:
        """A fresh run puts the first batch it trains on (after augmentation and MixUp/CutMix) into TensorBoard,
        as the loop gets it: what ``imgclf-preview`` draws. Recorded inside the loop, so training draws the same
        random numbers as without it; the run log, opened later, is read when the batch arrives."""
        if resuming or not self.cfg.report.figures or self.cfg.trainer.cache_features:
            return loader, extras

        def show(images: torch.Tensor, labels: torch.Tensor) -> None:
            if self._run_log is not None and self._run_log.writer is not None:
                first_batch_to_tensorboard(self._run_log.writer, images, labels, classes)

        return tap_first_batch(loader, extras, show)

    def interrupted(self, exc: Interrupted) -> None:
        log.warning("%s; wrote %s. Run the same command again to resume.", exc, self.exp.last)

    def calibrate(self, model: Classifier, device: torch.device) -> None:
        """``calibrate=true``: fit a temperature for ``best.pt`` on val and store it there (under the run's lock);
        then the trained ``best.pt`` goes to the trackers as the run's model (MLflow's ``log_model``)."""
        exp = self.exp
        if self.cfg.calibrate and exp.best.exists():
            stamp = file_stamp(exp.best)
            best = load_checkpoint(exp.best)
            load_weights(model, best, exp.best)
            with build.frozen_passes(self.cfg, model, device):
                calibrate(self.cfg, exp, exp.best, best, model, device, stamp)
        if exp.best.exists():
            self.loggers.log_model(str(self.cfg.experiment), [exp.best, exp.config])


class OtherRankWrites:
    """Ranks other than 0 under torchrun: they train in step with rank 0 and write nothing."""

    main = False
    after_epoch = None  # rank 0 reports a trial's epochs and tells the others whether to stop

    def lock(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def resume_payload(self) -> dict[str, Any] | None:
        return None  # rank 0 reads the checkpoint and broadcasts it

    def record_start(self, splits: Any, loaded: Any, state: TrainState, payload: dict[str, Any] | None) -> None:
        pass

    def checkpoints(self, *args: Any) -> Checkpoints:
        return ranks.Silent()

    def run_log(self, *args: Any) -> RunLog | ranks.Silent:
        return ranks.Silent()

    def interrupted(self, exc: Interrupted) -> None:
        pass

    def tap_first_batch(
        self, loader: TrainLoader, extras: StepExtras, classes: list[str], *, resuming: bool
    ) -> tuple[TrainLoader, StepExtras]:
        return loader, extras

    def calibrate(self, model: Classifier, device: torch.device) -> None:
        pass


def for_rank(cfg: DictConfig, exp: ExperimentDir, group: Distributed) -> MainWrites | OtherRankWrites:
    return MainWrites(cfg, exp) if group.is_main else OtherRankWrites()
