"""``train(cfg)``: one training run, as a handful of named steps in call order."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from imgclf.experiment.checkpoint import set_rng_states
from imgclf.experiment.folder import ExperimentDir
from imgclf.experiment.resume import check_classes, check_resumable, is_finished
from imgclf.models.classifier import Classifier
from imgclf.runtime import process_age, resolve_device, tune_malloc
from imgclf.tasks import (
    batch_size,
    build,
    depth_budget,
    frozen_budget,
    inputs,
    precision,
    preprocess,
    rank_writes,
    ranks,
    sweep,
)
from imgclf.tasks.config_check import check_config, expand_user_paths
from imgclf.tasks.failures import training_error
from imgclf.tasks.folders import check_same_data, entry_point_run, experiment_dir, in_sweep, report_finished
from imgclf.training import distributed
from imgclf.training.budget import Budget
from imgclf.training.distributed import Distributed
from imgclf.training.engine import Checkpoints, Stage, StepExtras, fit
from imgclf.training.signals import StopOnSignal
from imgclf.training.state import Diverged, Interrupted, TrainState

log = logging.getLogger(__name__)

StopSignal = Callable[[], AbstractContextManager[Any]]  # a context manager whose value says "stop now" when called


def train(cfg: DictConfig, *, stop_signal: StopSignal = StopOnSignal) -> float | None:
    """Train (or resume) the experiment ``cfg`` describes; returns the best monitored value (for sweepers).

    Args:
        cfg: the composed config (``conf/train.yaml`` or a recipe, with overrides).
        stop_signal: makes the object the loop asks whether to stop; by default Ctrl-C and SIGTERM stop
            training after the current step, with ``last.pt`` written.

    Raises:
        ImgclfError: a config key, the data, a checkpoint or the experiment folder cannot be used, or training
            cannot go on; the message names what and says what to do.
        Interrupted: stopped on request; run the same command again to resume.
    """
    # a budget (trainer.budget) counts from the command's start (a sweep job's: from here), as the user's clock does
    started = time.perf_counter() - (process_age() if entry_point_run() else 0.0)
    expand_user_paths(cfg)
    exp = experiment_dir(cfg)
    try:
        if in_sweep():  # a failed job keeps its folder and log: the sweep's summary points there
            return _train(cfg, exp, stop_signal, started)
        with exp.discarded_unless_used(Path(cfg.paths.experiments)):  # bad input before any result: no folder left
            return _train(cfg, exp, stop_signal, started)
    finally:
        distributed.teardown()  # under torchrun


def _train(cfg: DictConfig, exp: ExperimentDir, stop_signal: StopSignal, started: float) -> float | None:
    sweep.prepare_job(cfg)  # a parallel sweep job: its share of the CPU threads, its own GPU
    group, device = start(cfg)
    writes = rank_writes.for_rank(cfg, exp, group)  # rank 0 writes the experiment; the other ranks nothing
    data = plan_data(cfg, lambda scanned, sizes: fit_budget(cfg, exp, scanned, sizes, started, device, group))
    net = build.network(cfg)  # initialises the weights: the first draw from the seeded RNG
    net = build.placed(cfg, net, data.size.image_size, device)
    optimizer, scheduler = build.optimizer_and_scheduler(cfg, net)
    loss_fn = build.loss(cfg, device)  # a bad loss target fails here, before any file is decoded
    with writes.lock():
        payload = group.broadcast_checkpoint(writes.resume_payload())
        if payload is not None:  # a run on other data is neither done nor continued here (J3)
            check_same_data(cfg, exp, payload, data.classes)
            if is_finished(payload, cfg.epochs):
                return report_finished(cfg, exp, payload)
            check_classes(payload, data.classes)
        ranks.check_world_size(payload, group)
        run = prepare_run(
            cfg, exp, data, net, Optimization(optimizer, scheduler, loss_fn), payload, writes, group, device
        )
        state = train_stages(cfg, exp, run, writes, stop_signal, group, device, budget(cfg, run, group, started))
        writes.calibrate(run.model, device)
    log.info(
        "best %s = %.4f at epoch %d; checkpoints in %s",
        cfg.monitor,
        state.best or float("nan"),
        state.best_epoch,
        exp.path,
    )
    return state.best


def fit_budget(
    cfg: DictConfig,
    exp: ExperimentDir,
    scanned: Any,
    sizes: list[Any],
    started: float,
    device: torch.device,
    group: Distributed,
) -> None:
    """The choices made before any image is decoded: the precision ``trainer.amp=auto`` stands for; under
    ``trainer.budget``, with a frozen, cached backbone the backbones and size whose features fit (the transfer
    recipe's step-down), and for a network trained whole its depth (``trainer.budget_min_epochs``: the scratch
    recipe's), timed in that precision."""
    precision.fit(cfg, exp, sizes, device=device, group=group)
    frozen_budget.fit(cfg, exp, scanned, sizes, started=started, device=device, group=group)
    depth_budget.fit(cfg, exp, scanned, sizes, started=started, device=device, group=group)


@dataclass(frozen=True)
class DataPlan:
    """What the folder holds, read before the network is built: the source, its classes, the files found and the
    image size chosen from them."""

    source: Any
    classes: list[str]
    scanned: Any
    size: preprocess.SizeChoice


def plan_data(cfg: DictConfig, fit_model: Callable[[Any, list[Any]], None] | None = None) -> DataPlan:
    """List the folder (no image decoded yet) and choose the input size; config errors surface here first.
    ``fit_model(scanned, sizes)`` may change the model's config (and so its native size) before the size is chosen."""
    source = build.source(cfg)
    inputs.check_trainable(source)
    classes = source.class_names()  # lists folders only: config errors surface before any decoding
    inputs.fill_num_classes(cfg, classes, source.root)
    native = build.native_size(cfg)  # a bad model target fails here, before any file is read
    scanned = source.scan()  # once: the sizes below and the splits (unless resuming) come from it
    sizes = inputs.train_sizes(cfg, scanned)
    if fit_model is not None:
        fit_model(scanned, sizes)
        native = build.native_size(cfg)  # of the model it chose
    size = choose_image_size(cfg, native, sizes)
    return DataPlan(source, classes, scanned, size)


def resolve_preprocessing(
    cfg: DictConfig, size: preprocess.SizeChoice, net: torch.nn.Module, loaded: dict[str, Any]
) -> preprocess.Preprocessing:
    """The normalization of the run (the pretrained weights' own, ImageNet's, measured on train, or as given)
    with the decided sizes."""
    return preprocess.resolve(
        size,
        cfg.dataset.normalize,
        cfg.dataset.mean,
        cfg.dataset.std,
        expected=preprocess.model_stats(net),
        measure=lambda: inputs.train_stats(cfg, loaded["train"], size),
    )


@dataclass(frozen=True)
class Optimization:
    """What turns a loss into new weights: the optimizer, its learning-rate schedule and the loss."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: torch.nn.Module


@dataclass(frozen=True)
class Run:
    """A run ready to train: the model, its stages and state, and where its epochs are written."""

    model: Classifier
    stages: list[Stage]
    state: TrainState
    optimization: Optimization
    extras: StepExtras
    checkpoints: Checkpoints
    run_log: Any  # RunLog, or a stand-in on other ranks
    num_classes: int


def prepare_run(
    cfg: DictConfig,
    exp: ExperimentDir,
    data: DataPlan,
    net: torch.nn.Module,
    optimization: Optimization,
    payload: dict[str, Any] | None,
    writes: rank_writes.MainWrites | rank_writes.OtherRankWrites,
    group: Distributed,
    device: torch.device,
) -> Run:
    """Decode the splits, fix the preprocessing, restore a resumed run's state, record the start and build the
    loaders, stages, checkpoint writer and run log; the RNG streams are restored (or seeded apart) last."""
    source, classes = data.source, data.classes
    with group.main_first():  # the decoded-image cache: built once per machine, then read by the other ranks
        splits, loaded = inputs.prepare(
            cfg, exp, source, classes, data.size, scanned=data.scanned, resuming=payload is not None, writer=writes.main
        )
    prep = resolve_preprocessing(cfg, data.size, net, loaded)
    record_preprocessing(cfg, prep)
    model = Classifier(net, prep.mean, prep.std).to(device)
    loss_weights, sample_weights = inputs.balance(cfg, loaded["train"], len(classes))
    if loss_weights is not None:
        optimization = replace(optimization, loss_fn=build.loss(cfg, device, loss_weights))
    optimizer, scheduler = optimization.optimizer, optimization.scheduler
    extras = build.step_extras(cfg, model, device, payload)
    batch_size.resolve_batch_size(  # loader.batch_size=auto: found on the GPU (resuming: the run's own)
        cfg,
        model,
        train_size=len(loaded["train"].samples),
        device=device,
        group=group,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=optimization.loss_fn,
        extras=extras,
        payload=payload,
    )
    state = TrainState() if payload is None else restore(cfg, payload, classes, model, optimizer, scheduler, extras.ema)
    writes.record_start(splits, loaded, state, payload)
    train_loader, val_loader = inputs.train_loaders(cfg, loaded, prep, device, sample_weights, group)
    train_loader, extras = writes.tap_first_batch(train_loader, extras, classes, resuming=payload is not None)
    stages = inputs.stages(
        cfg,
        model,
        train_loader,
        val_loader,
        device,
        sample_weights,
        extras.batch_mix is not None,
        train_split=loaded["train"],
        prep=prep,
        start_epoch=state.epoch,
        group=group,
    )
    meta = {**checkpoint_meta(cfg, source.display_names(), classes, model, prep), "world_size": group.world_size}
    checkpoints = writes.checkpoints(model, optimizer, scheduler, meta, extras)
    run_log = writes.run_log(state, classes, val_loader.dataset, meta["num_parameters"], group, model)
    if payload is not None:
        set_rng_states(payload["rng"])  # last, so nothing above consumes the restored streams
    ranks.seed_apart(cfg.seed, group, state)
    counts = ", ".join(f"{name} {n}" for name, n in splits.counts().items())
    shown = ", ".join(classes[:10]) + (f" and {len(classes) - 10} more" if len(classes) > 10 else "")
    log.info(
        "training %s: %s images; %d classes (%s); %s on %s -> %s",
        cfg.experiment,
        counts,
        len(classes),
        shown,
        type(net).__name__,
        device,
        exp.path,
    )
    return Run(model, stages, state, optimization, extras, checkpoints, run_log, len(classes))


def train_stages(
    cfg: DictConfig,
    exp: ExperimentDir,
    run: Run,
    writes: rank_writes.MainWrites | rank_writes.OtherRankWrites,
    stop_signal: StopSignal,
    group: Distributed,
    device: torch.device,
    budget: Budget | None = None,
) -> TrainState:
    """Train each stage in turn (the head on cached features, then the whole network); a stop on request
    writes ``last.pt`` and says how to resume, a failure is explained."""
    state, opt = run.state, run.optimization
    with stop_signal() as stop:
        try:
            for stage in run.stages:
                # checkpoints always hold the plain module's weights
                trained = ranks.wrapped(stage.module, group, device, cfg.trainer.sync_bn)
                trained = torch.compile(trained) if cfg.trainer.compile else trained
                state = fit(
                    replace(stage, module=trained),
                    opt.loss_fn,
                    opt.optimizer,
                    opt.scheduler,
                    build.train_options(cfg),
                    device=device,
                    num_classes=run.num_classes,
                    state=state,
                    checkpoints=run.checkpoints,
                    log=run.run_log,
                    extras=run.extras,
                    should_stop=stop,
                    after_epoch=writes.after_epoch,
                    group=group,
                    budget=budget,
                )
        except Interrupted as exc:
            writes.interrupted(exc)
            raise Interrupted(str(exc), exit_code=stop.exit_code) from None
        except (Diverged, torch.OutOfMemoryError, RuntimeError) as exc:
            raise training_error(cfg, exc, device, exp) from None
        finally:
            run.run_log.close()
    return state


def budget(cfg: DictConfig, run: Run, group: Distributed, started: float) -> Budget | None:
    """``trainer.budget``'s planner (None without one), its schedule handed to the run's scheduler; a resumed run
    goes on with the budget its checkpoint says is left."""
    minutes = cfg.trainer.get("budget")
    if minutes is None:
        return None
    stage, scheduler = run.stages[0], run.optimization.scheduler
    steps_per_epoch = -(-len(stage.train) // cfg.trainer.accumulate)
    scheduler.follow_plan(cfg.epochs if scheduler.interval == "epoch" else cfg.epochs * steps_per_epoch)
    plan = Budget(
        minutes,
        max_epochs=cfg.epochs,
        steps_per_epoch=steps_per_epoch,
        val_batches=len(stage.val),
        on_plan=scheduler.plan,
        agree=group.broadcast,
        started=started,
        state=run.state.budget,
    )
    state = run.state
    plan.begin(state.epoch, -(-state.step // cfg.trainer.accumulate))
    return plan


def choose_image_size(cfg: DictConfig, native: int | None, sizes: list[Any]) -> preprocess.SizeChoice:
    """``dataset.image_size`` (a number or ``auto``) as the sizes the run uses; written into ``cfg`` at once, so
    every ``${dataset.image_size}`` (an augmentation's crop size) and the saved config read the number."""
    choice = build.image_size(cfg, native, sizes)
    cfg.dataset.image_size = choice.image_size
    cached = (
        f", cached as {choice.decode_size} px squares for the centre crop"
        if choice.decode_size > choice.image_size
        else ""
    )
    log.info("image size %d px (%s)%s", choice.image_size, choice.reason, cached)
    return choice


def start(cfg: DictConfig) -> tuple[Distributed, torch.device]:
    """Check the config, tune the process, join the other ranks (under torchrun), seed every generator; the group
    and the device to train on."""
    check_config(cfg)
    if cfg.tune_malloc:
        tune_malloc()
    group, device_name = distributed.setup(cfg.device, cfg.trainer.dist_timeout)
    ranks.quiet(group)
    device = resolve_device(device_name)
    batch_size.refuse_off_cuda(cfg, device)  # loader.batch_size=auto off CUDA: refused before any image is decoded
    ranks.check_sync_bn(cfg.trainer.sync_bn, device)
    if group.active and not batch_size.is_auto(cfg):  # with auto, the batch found is logged with the global one
        log.info(
            "%d processes: global batch %d (loader.batch_size %d per rank x %d ranks), %d per optimizer step "
            "with trainer.accumulate=%d; optimizer.lr as configured (not scaled)",
            group.world_size,
            cfg.loader.batch_size * group.world_size,
            cfg.loader.batch_size,
            group.world_size,
            cfg.loader.batch_size * group.world_size * cfg.trainer.accumulate,
            cfg.trainer.accumulate,
        )
    seed_everything(cfg.seed, cfg.deterministic)
    return group, device


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; ``deterministic`` asks for bit-reproducible kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    # fixed input sizes: unless runs must be bit-reproducible, let cuDNN pick the fastest kernels, and let fp32
    # matrix products on CUDA use TF32 where the GPU has it (as convolutions already do; the CPU is unaffected)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cuda.matmul.allow_tf32 = not deterministic


def record_preprocessing(cfg: DictConfig, prep: preprocess.Preprocessing) -> None:
    """Write the resolved preprocessing into the config that is saved with the run, so that the saved
    config reproduces it: the values used, and ``normalize: custom`` when they came from the model."""
    cfg.dataset.image_size = prep.image_size
    cfg.dataset.mean, cfg.dataset.std = list(prep.mean), list(prep.std)
    if prep.source == "model":
        cfg.dataset.normalize = "custom"


def restore(
    cfg: DictConfig,
    payload: dict[str, Any],
    classes: list[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    ema: Any = None,
) -> TrainState:
    """Load the state of an interrupted run into the freshly built objects (refusing a changed setup)."""
    check_resumable(payload, OmegaConf.to_container(cfg, resolve=True), classes)  # type: ignore[arg-type]
    model.load_state_dict(payload.get("train_model") or payload["model"])
    if ema is not None and payload.get("train_model"):
        ema.module.load_state_dict(payload["model"])
        ema.n_averaged.fill_(payload["ema_steps"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    state = TrainState(**payload["state"])
    log.info("resuming %s from epoch %d (batch %d)", cfg.experiment, state.epoch, state.step)
    return state


def checkpoint_meta(
    cfg: DictConfig,
    display_names: dict[str, str],
    classes: list[str],
    model: Classifier,
    prep: preprocess.Preprocessing,
) -> dict[str, Any]:
    """The plain values every checkpoint of the run carries: enough for test.py and predict.py alone."""
    return {
        "experiment": cfg.experiment,
        "class_names": classes,
        "display_names": display_names,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "image_size": prep.image_size,
        "mean": list(prep.mean),
        "std": list(prep.std),
        "preprocessing": prep.record(),
        "monitor": cfg.monitor,
        "mode": cfg.mode,
        "epochs": cfg.epochs,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
