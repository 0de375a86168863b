"""``preview(cfg)``: the first training batches of ``train(cfg)``, drawn, without training.

The data is built by the steps ``train_task._train`` takes, in its order (the same functions, imported), so that
the seeded random streams are where a fresh run has them when its loop asks for the first batch: the source, the
image size, the network (its initialisation is the first draw from the seeded generator), the splits and the
decoded-image cache, the preprocessing, the loaders, ``batch_mix``. The batches are then taken as the loop takes
them (to the device, then MixUp/CutMix) and drawn into ``experiments/<experiment>/preview.png`` (batch 1) and
``preview_<n>.png`` (batch n).

The first batch is the one a fresh run trains on, pixel for pixel. Later ones are too, unless the model draws
random numbers on the CPU generator while training (dropout on the CPU): the loop's forward passes then move the
stream that per-image augmentation and MixUp/CutMix read, and no preview that does not train could follow it.

Nothing is trained, no checkpoint is written and nothing in the experiment folder is removed or replaced but the
preview's own PNGs; the experiment need not exist (its folder then holds the preview and Hydra's record only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from imgclf.data.dataset import make_loader
from imgclf.data.prepare import LoadedSplit
from imgclf.data.preprocessing import Preprocessing
from imgclf.errors import ConfigError
from imgclf.experiment.folder import ExperimentDir
from imgclf.models.classifier import Classifier
from imgclf.reporting import figures
from imgclf.reporting.batches import batch_grid
from imgclf.tasks import build, inputs, precision
from imgclf.tasks.batch_size import refuse_off_cuda, resolve_batch_size
from imgclf.tasks.config_check import expand_user_paths
from imgclf.tasks.folders import experiment_dir
from imgclf.tasks.train_task import plan_data, resolve_preprocessing, start
from imgclf.training import distributed
from imgclf.training.engine import Batch, StepExtras, TrainLoader, loop_inputs
from imgclf.training.features import why_not_cacheable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preview:
    """The first batches as the loop receives them (on the CPU), and what is needed to read them.

    Attributes:
        batches: (images, labels): uint8 images, or floats in 0..1 with soft labels after MixUp/CutMix.
        classes: class names, in label order.
        mean, std: the normalization the model applies to them (``Classifier``).
        features: True when the loop trains a head on the backbone features of these images
            (``trainer.cache_features``), not on the images themselves.
    """

    batches: list[Batch]
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    features: bool = False


def preview(cfg: DictConfig) -> list[Path]:
    """Draw the first ``preview.batches`` training batches of ``cfg``'s run; the PNGs written.

    Raises:
        ImgclfError: a config key or the data cannot be used (as ``train(cfg)`` would say).
    """
    expand_user_paths(cfg)
    exp = experiment_dir(cfg)
    try:
        with exp.discarded_unless_used(Path(cfg.paths.experiments)):  # bad input: no folder left behind
            shown = first_batches(cfg, exp, cfg.preview.batches)
            return write(exp, shown, cfg.preview.images)
    finally:
        distributed.teardown()


def first_batches(cfg: DictConfig, exp: ExperimentDir, count: int) -> Preview:
    """The first ``count`` batches of epoch 1 of a fresh ``train(cfg)``, after every augmentation and MixUp/CutMix.

    The steps of ``train_task._train`` up to its loop, minus what draws no random number and builds no data (the
    optimizer, the loss, the checkpoint writer, the run log) and minus what writes into the experiment folder.
    """
    group, device = start(cfg)  # checks the config, seeds every generator
    refuse_off_cuda(cfg, device)  # loader.batch_size=auto: before any image is decoded
    data = plan_data(cfg, lambda scanned, sizes: precision.fit(cfg, None, sizes, device=device, group=group))
    classes, size = data.classes, data.size
    net = build.network(cfg)  # the first draw from the seeded generator, as in training
    net = build.placed(cfg, net, size.image_size, device)
    _, loaded = inputs.prepare(cfg, exp, data.source, classes, size, scanned=data.scanned, resuming=False, writer=False)
    prep = resolve_preprocessing(cfg, size, net, loaded)
    model = Classifier(net, prep.mean, prep.std).to(device)
    _, sample_weights = inputs.balance(cfg, loaded["train"], len(classes))
    extras = build.step_extras(cfg, model, device, None)
    resolve_batch_size(cfg, model, train_size=len(loaded["train"].samples), device=device, group=group, extras=extras)
    train_loader, _ = inputs.train_loaders(cfg, loaded, prep, device, sample_weights, group)
    features = bool(cfg.trainer.cache_features)
    if features:
        train_loader = feature_images(
            cfg, model, train_loader, loaded["train"], prep, sample_weights, extras.batch_mix is not None
        )
    model.set_epoch(0)  # the loop tells its followers the epoch before the first batch
    batches = loop_batches(train_loader, extras, device, cfg.trainer.channels_last, count)
    return Preview(batches, classes, tuple(prep.mean), tuple(prep.std), features)


def feature_images(
    cfg: DictConfig,
    model: Classifier,
    train_loader: TrainLoader,
    train: LoadedSplit,
    prep: Preprocessing,
    sample_weights: list[float] | None,
    batch_mix: bool,
) -> TrainLoader:
    """With ``trainer.cache_features`` the loop's first epochs see backbone features, in the shuffled order of a
    loader over them: the images behind those features, in that order (``inputs.stages`` picks them the same
    way: the train images as served, or with ``model.unfreeze_at_epoch`` the un-augmented ones). With
    ``trainer.feature_views`` > 1 a random augmentation was drawn for the cached copies: this shows a new draw."""
    reason = why_not_cacheable(model, cfg.augmentation.train is not None, batch_mix, cfg.trainer.feature_views)
    if reason:  # what training refuses (inputs.stages)
        raise ConfigError(f"trainer.cache_features=true cannot apply: {reason}")
    if cfg.trainer.feature_views == 1 and getattr(model.net, "unfreeze_at_epoch", None) is not None:
        images = inputs.split_dataset(cfg, train, prep, cfg.augmentation.eval, cfg.dataset.bad_files)
    else:
        images = train_loader.dataset  # type: ignore[attr-defined]
    log.info("trainer.cache_features: the head trains on the backbone features of these images")
    return make_loader(
        images, batch_size=cfg.loader.batch_size, shuffle=True, seed=cfg.seed, weights=sample_weights
    )  # the order of the head's loader over the features (inputs.stages)


def loop_batches(
    loader: TrainLoader, extras: StepExtras, device: torch.device, channels_last: bool, count: int
) -> list[Batch]:
    """The first ``count`` non-empty batches of epoch 1, prepared by ``engine.loop_inputs`` as the training loop
    prepares them, back on the CPU."""
    loader.set_epoch(0, 0)
    taken: list[Batch] = []
    for images, labels in loader:
        if not len(labels):  # every sample of the batch failed to load (dataset.bad_files=skip)
            continue
        images, labels = loop_inputs(images, labels, device, channels_last, extras)
        taken.append((images.cpu(), labels.cpu()))
        if len(taken) == count:
            break
    return taken


def file_name(number: int) -> str:
    """``preview.png`` for the first batch, ``preview_<n>.png`` for batch n."""
    return "preview.png" if number == 1 else f"preview_{number}.png"


def write(exp: ExperimentDir, shown: Preview, images: int) -> list[Path]:
    """One PNG per batch (at most ``images`` tiles each) in the experiment folder; the paths written."""
    written = []
    for number, (batch, labels) in enumerate(shown.batches, start=1):
        mixed = " (MixUp/CutMix: soft labels)" if labels.ndim == 2 else ""
        what = "images behind the head's features" if shown.features else "images"
        title = f"training batch {number} of epoch 1: {min(images, len(labels))} of {len(labels)} {what}{mixed}"
        path = exp.path / file_name(number)
        figures.save(batch_grid(batch, labels, shown.classes, title, limit=images), path)
        written.append(path)
    if not written:
        log.warning("no training batch to show: the train split has too few images for one batch")
    for path in written:
        log.info("preview: %s", path)
    return written
