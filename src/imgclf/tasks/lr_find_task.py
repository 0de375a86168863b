"""``lr_find(cfg)``: the learning-rate range test of ``train(cfg)``'s run, through its real loop on its real batches.

Everything is built by the steps ``train_task._train`` takes, in its order (the same functions, imported, as
``preview_task`` does): the seeded source, image size, network, optimizer and scheduler, loss, splits and decoded
images, preprocessing, class balance, ``batch_mix``, loaders and stages. With ``trainer.cache_features`` the first
stage is swept: the head on the cached backbone features, as the run's first epochs train it. The sweep itself is
``training.lr_range.range_test``: real steps of ``train_one_epoch`` at an exponentially growing learning rate.

Nothing is trained for keeps: the weights, optimizer and random generators are restored, no checkpoint is written
and nothing of an existing experiment is changed but ``lr_find.png`` and ``lr_find.csv`` (and Hydra's record of the
command); the curve goes to TensorBoard under ``runs/<experiment>/lr_find``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from imgclf.atomic import csv_text, write_text_atomic
from imgclf.errors import ConfigError
from imgclf.experiment.folder import ExperimentDir
from imgclf.models.classifier import Classifier
from imgclf.reporting import figures
from imgclf.reporting.lr_curve import lr_events, lr_figure
from imgclf.tasks import batch_size, build, inputs, precision
from imgclf.tasks.config_check import expand_user_paths
from imgclf.tasks.folders import experiment_dir
from imgclf.tasks.train_task import plan_data, resolve_preprocessing, start
from imgclf.training import distributed
from imgclf.training.lr_range import Curve, Suggestion, Sweep, SweepError, range_test, suggest

log = logging.getLogger(__name__)

PLOT, TABLE, EVENTS = "lr_find.png", "lr_find.csv", "lr_find"


@dataclass(frozen=True)
class LrFound:
    """The sweep, what it suggests, and the files written."""

    curve: Curve
    suggestion: Suggestion
    plot: Path
    table: Path
    events: Path

    def override(self) -> str | None:
        """The suggestion as the override to paste (``optimizer.lr=0.0032``), or None."""
        lr = self.suggestion.lr
        return None if lr is None else f"optimizer.lr={lr:.2g}"


def lr_find(cfg: DictConfig) -> LrFound:
    """Run the range test of ``cfg``'s run and write its plot, table and TensorBoard curve.

    Raises:
        ImgclfError: a config key (``lr_find.*`` included) or the data cannot be used.
    """
    expand_user_paths(cfg)
    sweep = sweep_settings(cfg)
    exp = experiment_dir(cfg)
    try:
        with exp.discarded_unless_used(Path(cfg.paths.experiments)):  # bad input: no folder left behind
            curve = sweep_run(cfg, exp, sweep)
            return write(cfg, exp, curve, suggest(curve))
    finally:
        distributed.teardown()


def sweep_settings(cfg: DictConfig) -> Sweep:
    """The ``lr_find`` section as a :class:`Sweep`; a bad value is refused naming its key."""
    node = cfg.get("lr_find")
    if node is None:
        raise ConfigError("no lr_find section in the config: add the one of conf/train.yaml (start, end, steps, ...)")
    try:
        return Sweep(start=node.start, end=node.end, steps=node.steps, smooth=node.smooth, diverge=node.diverge)
    except SweepError as exc:
        raise ConfigError(f"lr_find.{exc.key}={exc.value!r}: expected {exc.expected}") from None
    except TypeError as exc:  # a string where a number goes
        raise ConfigError(f"lr_find: {exc}; the keys are numbers (start, end, smooth, diverge) and steps") from None


def sweep_run(cfg: DictConfig, exp: ExperimentDir, sweep: Sweep) -> Curve:
    """Build the run as ``train_task._train`` does (no folder written, nothing resumed) and sweep its first stage."""
    group, device = start(cfg)  # checks the config, seeds every generator
    if group.active:
        raise ConfigError("imgclf-lr-find runs in one process: start it without torchrun")
    data = plan_data(cfg, lambda scanned, sizes: precision.fit(cfg, None, sizes, device=device, group=group))
    net = build.network(cfg)  # the first draw from the seeded generator, as in training
    net = build.placed(cfg, net, data.size.image_size, device)
    optimizer, _ = build.optimizer_and_scheduler(cfg, net)  # built as training does; the sweep sets the rates
    loss_fn = build.loss(cfg, device)
    _, loaded = inputs.prepare(
        cfg, exp, data.source, data.classes, data.size, scanned=data.scanned, resuming=False, writer=False
    )
    prep = resolve_preprocessing(cfg, data.size, net, loaded)
    model = Classifier(net, prep.mean, prep.std).to(device)
    loss_weights, sample_weights = inputs.balance(cfg, loaded["train"], len(data.classes))
    if loss_weights is not None:
        loss_fn = build.loss(cfg, device, loss_weights)
    extras = build.step_extras(cfg, model, device, None)
    batch_size.resolve_batch_size(  # loader.batch_size=auto (CUDA): the batch training would find
        cfg,
        model,
        train_size=len(loaded["train"].samples),
        device=device,
        optimizer=optimizer,
        loss_fn=loss_fn,
        extras=extras,
    )
    train_loader, val_loader = inputs.train_loaders(cfg, loaded, prep, device, sample_weights, group)
    stage = inputs.stages(
        cfg,
        model,
        train_loader,
        val_loader,
        device,
        sample_weights,
        extras.batch_mix is not None,
        train_split=loaded["train"],
        prep=prep,
        start_epoch=0,
        group=group,
    )[0]  # with cached features: the head on them, as the first epochs train
    if cfg.trainer.compile:
        log.info("lr_find: trainer.compile is left out (compiling costs more than the sweep; the steps are the same)")
    what = "the head on cached backbone features" if stage.module is not model else type(net).__name__
    log.info(
        "lr_find: %d steps of %s from lr %.2g to %.2g (stops early when the loss diverges)",
        sweep.steps,
        what,
        sweep.start,
        sweep.end,
    )
    return range_test(
        stage.module,
        stage.train,
        loss_fn,
        optimizer,
        device=device,
        options=build.train_options(cfg),
        extras=extras,
        sweep=sweep,
        followers=stage.followers,
    )


def write(cfg: DictConfig, exp: ExperimentDir, curve: Curve, suggestion: Suggestion) -> LrFound:
    """``lr_find.png`` and ``lr_find.csv`` in the experiment folder, the curve in ``runs/<experiment>/lr_find``."""
    exp.path.mkdir(parents=True, exist_ok=True)
    stopped = f", stopped at step {len(curve.lrs)}: the loss diverged" if curve.diverged else ""
    title = f"{cfg.experiment}: learning-rate range test ({len(curve.lrs)} of {cfg.lr_find.steps} steps{stopped})"
    fig = lr_figure(
        curve.lrs,
        curve.losses,
        curve.smoothed,
        suggested=suggestion.lr,
        steepest=suggestion.steepest,
        minimum=suggestion.minimum,
        title=title,
    )
    events_dir = exp.tensorboard_dir / EVENTS
    events_dir.mkdir(parents=True, exist_ok=True)
    lr_events(curve.lrs, curve.losses, curve.smoothed, fig).save(events_dir)
    figures.save(fig, exp.path / PLOT)
    rows = zip(curve.lrs, map(_number, curve.losses), map(_number, curve.smoothed), strict=True)
    write_text_atomic(exp.path / TABLE, csv_text(("lr", "loss", "smoothed"), ([f"{lr:.10g}", *r] for lr, *r in rows)))
    found = LrFound(curve, suggestion, exp.path / PLOT, exp.path / TABLE, events_dir)
    log.info("lr_find: %s, %s; TensorBoard: %s", found.plot, found.table, events_dir)
    return found


def _number(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else "inf"
