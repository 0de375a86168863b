"""``audit(cfg)``: suspect labels, duplicates and outliers of ``dataset.root``, as the recipe ``cfg`` sees it.

The source, image size, decoding, preprocessing and network are built exactly as ``train_task`` builds them;
then every labelled image gets out-of-fold probabilities (``imgclf.audit.folds``), and the embeddings of a
pretrained backbone give the duplicates and outliers. The results go to ``experiments/<experiment>/audit/``,
written as a whole under the experiment's lock; a trained experiment's checkpoints are never touched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from imgclf.audit.duplicates import duplicates, normalised
from imgclf.audit.files import write_audit
from imgclf.audit.folds import assign_folds, out_of_fold, small_classes
from imgclf.audit.heads import head_scorer
from imgclf.audit.issues import label_issues
from imgclf.audit.outliers import find_outliers, outlier_scores
from imgclf.audit.records import Audited, Findings
from imgclf.data.dataset import make_loader
from imgclf.data.folder import Splits, remap
from imgclf.data.prepare import LoadedSplit
from imgclf.data.preprocessing import Preprocessing
from imgclf.errors import ConfigError
from imgclf.experiment.folder import ExperimentDir
from imgclf.models.classifier import Classifier, with_tta
from imgclf.tasks import build, inputs, precision, preprocess, ranks
from imgclf.tasks.batch_size import refuse_off_cuda, resolve_batch_size
from imgclf.tasks.calibration import outputs
from imgclf.tasks.config_check import expand_user_paths
from imgclf.tasks.folders import config_name, experiment_dir
from imgclf.tasks.train_task import plan_data, record_preprocessing, resolve_preprocessing, start
from imgclf.training.engine import fit
from imgclf.training.features import extract, why_not_cacheable
from imgclf.training.state import TrainState

log = logging.getLogger(__name__)

LITE0_SIZE = 224  # the offline EfficientNet-Lite0's input side, for embeddings when the recipe has no frozen backbone


def audit(cfg: DictConfig) -> dict[str, Any]:
    """Audit ``dataset.root``; writes ``experiments/<experiment>/audit/`` and returns the counts found.

    Raises:
        ImgclfError: a config key, the data or the experiment folder cannot be used; the message says what to do.
    """
    expand_user_paths(cfg)
    exp = experiment_dir(cfg)
    with exp.discarded_unless_used(Path(cfg.paths.experiments)):  # bad input before any result: no folder left
        return _audit(cfg, exp)


def _audit(cfg: DictConfig, exp: ExperimentDir) -> dict[str, Any]:
    group, device = start(cfg)  # the config checked (audit keys too), the generators seeded
    refuse_off_cuda(cfg, device)  # loader.batch_size=auto: before any image is decoded
    # the folder listed, trainer.amp=auto resolved and the input size chosen, as a training run does
    data = plan_data(cfg, lambda scanned, sizes: precision.fit(cfg, None, sizes, device=device, group=group))
    source, classes, size = data.source, data.classes, data.size
    net = build.placed(cfg, build.network(cfg), size.image_size, device)
    pool, split_of = audited_samples(remap(data.scanned, classes), include_test=cfg.audit.include_test)
    loaded = inputs.load(cfg, source, Splits(classes, {"train": pool}), ("train",), size)["train"]
    prep = resolve_preprocessing(cfg, size, net, {"train": loaded})
    record_preprocessing(cfg, prep)
    model = Classifier(net, prep.mean, prep.std).to(device)
    folds = cfg.audit.folds  # loader.batch_size=auto: found for a fold's training run (the frozen passes need less)
    resolve_batch_size(cfg, model, train_size=len(loaded.samples) * (folds - 1) // folds, device=device)
    images = Audited(
        source.root,
        [p for p, _ in loaded.samples],
        [split_of[p] for p, _ in loaded.samples],
        np.array([label for _, label in loaded.samples], dtype=np.int64),
        classes,
    )
    fold_of = assign_folds(images.labels, cfg.audit.folds, cfg.audit.seed)
    features = frozen_features(cfg, model, loaded, prep, device)
    if features is not None:
        how = (
            f"Out-of-fold probabilities: {cfg.audit.folds} folds, the recipe's head trained on cached frozen features."
        )
        probs = out_of_fold(fold_of, len(classes), fast_scorer(cfg, model, features, images.labels, device))
        embeddings, origin = features.mean(0), "the recipe's frozen backbone"
    else:
        how = f"Out-of-fold probabilities: {cfg.audit.folds} folds, each a full training run of the recipe."
        probs = out_of_fold(fold_of, len(classes), slow_scorer(cfg, model, loaded, prep, device, cfg.audit.folds))
        embeddings, origin = (
            lite0_embeddings(cfg, source, loaded, classes, device),
            "the offline EfficientNet-Lite0 (224 px)",
        )
    found = findings(cfg, images, loaded, probs, embeddings.cpu(), origin, how)
    with exp.lock("wait for it to finish, then run the audit again"):
        summary = write_audit(
            exp.path / "audit",
            images,
            found,
            gallery_rows=cfg.audit.gallery_rows,
            gallery_pages=cfg.audit.gallery_pages,
        )
    counts = {"images": len(images.paths), "issues": len(found.issues), "duplicates": len(found.pairs)}
    counts["outliers"] = len(found.outliers)
    log.info(
        "audit of %s: %d suspect label(s), %d duplicate pair(s), %d outlier(s) among %d images; see %s",
        source.root,
        counts["issues"],
        counts["duplicates"],
        counts["outliers"],
        counts["images"],
        summary,
    )
    return counts


def audited_samples(splits: Splits, *, include_test: bool) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """The labelled images audited (train and val, and test when asked) as one list, and each path's split."""
    names = ("train", "val", "test") if include_test else ("train", "val")
    pool = [sample for name in names for sample in splits.samples.get(name, [])]
    return pool, {path: name for name in names for path, _ in splits.samples.get(name, [])}


def findings(
    cfg: DictConfig,
    images: Audited,
    loaded: LoadedSplit,
    probs: np.ndarray,
    embeddings: torch.Tensor,
    origin: str,
    how: str,
) -> Findings:
    """Label issues, duplicates and outliers from the out-of-fold ``probs`` and the ``embeddings``."""
    threshold = cfg.audit.duplicate_threshold
    digests = [loaded.report.digests[row] for row in loaded.rows]
    pairs = duplicates(embeddings, digests, images.paths, threshold, neighbours=cfg.audit.duplicate_neighbours)
    scores = outlier_scores(normalised(embeddings))
    small = small_classes(images.labels, cfg.audit.folds, images.class_names)
    return Findings(
        issues=label_issues(images.labels, probs, rank_by=cfg.audit.rank_by),
        pairs=pairs,
        outliers=find_outliers(scores, probs, images.class_names),
        probs=probs,
        notes={
            "how": how,
            "rank_by": cfg.audit.rank_by,
            "small_classes": ", ".join(small),
            "duplicates": (
                f"Identical files by their SHA-1; copies a hash cannot see: each image is compared with its "
                f"{cfg.audit.duplicate_neighbours} nearest images in the embeddings of {origin} (audit.duplicate_"
                "neighbours), and a pair is listed when their grey thumbnails, best aligned over crops and the "
                f"mirror image, correlate at least audit.duplicate_threshold={threshold} (the similarity column; "
                "copies resized 0.5-2x, re-encoded as JPEG, cropped 10% or mirrored score 0.98 or more)."
            ),
            "outliers": (
                f"cleanlab's kNN out-of-distribution score on the (centred, normalised) embeddings of {origin}; an "
                "image is an outlier when its distance to its nearest images (-log of the score) lies beyond "
                "Tukey's far-out fence (third quartile + 3 x interquartile range) of the folder's distances. The "
                "CSV's score is 1 - cleanlab's (higher: more unusual)."
            ),
            "exclude_command": exclude_command(cfg),
        },
    )


def exclude_command(cfg: DictConfig) -> str:
    """The command that trains the recipe without the images label_issues.csv lists."""
    listed = Path(cfg.paths.experiments) / cfg.experiment / "audit" / "label_issues.csv"
    return f"python train.py -cn={config_name()} dataset.root={cfg.dataset.root} dataset.exclude={listed.absolute()}"


def frozen_features(
    cfg: DictConfig, model: Classifier, loaded: LoadedSplit, prep: Preprocessing, device: torch.device
) -> torch.Tensor | None:
    """(views, images, dims) frozen-backbone features of every audited image (the recipe's eval transform, and
    its mirror image too with ``tta=flip``), computed once; None when the recipe trains more than a head on
    cached features (``trainer.cache_features``)."""
    if not cfg.trainer.cache_features:
        return None
    reason = why_not_cacheable(model, False, build.batch_mix(cfg) is not None)
    if reason or getattr(model.net, "unfreeze_at_epoch", None) is not None:
        return None
    dataset = inputs.split_dataset(cfg, loaded, prep, cfg.augmentation.eval)
    loader = make_loader(dataset, batch_size=cfg.loader.batch_size, shuffle=False)
    flips = (False, True) if cfg.tta == "flip" else (False,)
    options = {"progress": cfg.progress, "channels_last": cfg.trainer.channels_last}
    with build.frozen_passes(cfg, model, device):
        views = [
            extract(
                model,
                _mirrored(loader) if flip else loader,
                device,
                desc=f"features{' mirrored' if flip else ''}",
                **options,
            ).tensors[0]
            for flip in flips
        ]
    return torch.stack(views)


def _mirrored(loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for images, labels in loader:
        yield images.flip(-1), labels


def fast_scorer(
    cfg: DictConfig, model: Classifier, features: torch.Tensor, labels: np.ndarray, device: torch.device
) -> Any:
    """Per fold, a fresh copy of the recipe's head trained on the kept images' cached features."""
    log.info(
        "%d folds: the head trains %d epochs on the cached features of %d image(s) per fold (seconds each)",
        cfg.audit.folds,
        cfg.epochs,
        features.shape[1],
    )
    return head_scorer(
        model.net.head,
        features,
        torch.as_tensor(labels, device=features.device),
        optimizers=lambda head: build.optimizer_and_scheduler(cfg, head),
        loss_fn=build.loss(cfg, device),
        epochs=cfg.epochs,
        batch_size=cfg.loader.batch_size,
        seed=cfg.audit.seed,
    )


def slow_scorer(
    cfg: DictConfig, model: Classifier, loaded: LoadedSplit, prep: Preprocessing, device: torch.device, folds: int
) -> Any:
    """Per fold, the whole recipe trained from its start on the kept images (``epochs`` epochs, the last epoch's
    weights), scoring the held-out ones with the recipe's ``tta``. The held-out images are the validation set of
    ``fit``, which reports on them but never trains on them (early stopping is off: it would choose by them)."""
    log.info(
        "%d folds, each a full training run of %d epochs on about %d images: the audit takes about %d times "
        "as long as training the recipe once (the time of fold 1 is said when it ends)",
        folds,
        cfg.epochs,
        len(loaded.samples) * (folds - 1) // folds,
        folds,
    )
    first = {name: value.detach().clone() for name, value in model.state_dict().items()}  # not the live tensors
    started = time.perf_counter()

    def train_and_score(kept: np.ndarray, held_out: np.ndarray, fold: int) -> np.ndarray:
        model.load_state_dict(first)  # every fold starts from the same initial weights
        train_part, held = _subset(loaded, kept), _subset(loaded, held_out)
        _fit_fold(cfg, model, train_part, held, prep, device)
        evaluated = with_tta(model, cfg.tta)
        found = outputs(
            cfg, evaluated, inputs.split_dataset(cfg, held, prep, cfg.augmentation.eval), device, "held out"
        )
        if fold == 0:
            log.info(
                "fold 1 took %.0f s: about %.0f s more",
                time.perf_counter() - started,
                (folds - 1) * (time.perf_counter() - started),
            )
        return found.logits.float().softmax(1).double().numpy()

    return train_and_score


def _subset(split: LoadedSplit, indices: np.ndarray) -> LoadedSplit:
    return replace(split, samples=[split.samples[i] for i in indices], rows=[split.rows[i] for i in indices])


def _fit_fold(
    cfg: DictConfig, model: Classifier, train: LoadedSplit, held: LoadedSplit, prep: Preprocessing, device: torch.device
) -> None:
    optimizer, scheduler = build.optimizer_and_scheduler(cfg, model.net)
    loaded = {"train": train, "val": held}
    train_loader, val_loader = inputs.train_loaders(cfg, loaded, prep, device)
    extras = build.step_extras(cfg, model, device, None)
    if extras.ema is not None:
        raise ConfigError("imgclf-audit does not support trainer.ema_decay yet: set trainer.ema_decay=null")
    stages = inputs.stages(
        cfg,
        model,
        train_loader,
        val_loader,
        device,
        None,
        extras.batch_mix is not None,
        train_split=train,
        prep=prep,
        start_epoch=0,
    )
    options = replace(build.train_options(cfg), patience=None)
    state = TrainState()
    for stage in stages:
        state = fit(
            stage,
            build.loss(cfg, device),
            optimizer,
            scheduler,
            options,
            device=device,
            num_classes=cfg.dataset.num_classes,
            state=state,
            checkpoints=ranks.Silent(),
            log=ranks.Silent(),
            extras=extras,
        )


def lite0_embeddings(
    cfg: DictConfig, source: Any, loaded: LoadedSplit, classes: list[str], device: torch.device
) -> torch.Tensor:
    """Features of the offline EfficientNet-Lite0 (ImageNet weights) at 224 px: the embeddings for duplicates and
    outliers when the recipe's own network is trained from scratch (its features would be the folds' own)."""
    from imgclf.models.efficientnet_lite import EfficientNetLite

    net = EfficientNetLite(num_classes=2, variant="lite0", pretrained=True, freeze="backbone")
    model = Classifier(net, net.input_mean, net.input_std).to(device)
    size = preprocess.SizeChoice(LITE0_SIZE, LITE0_SIZE, "keep_aspect", "the Lite0 embeddings")
    again = inputs.load(cfg, source, Splits(classes, {"train": loaded.samples}), ("train",), size)["train"]
    dataset = again.dataset(LITE0_SIZE, None)
    loader = make_loader(dataset, batch_size=cfg.loader.batch_size, shuffle=False)
    with build.frozen_passes(cfg, model, device):
        return extract(model, loader, device, desc="features Lite0", progress=cfg.progress).tensors[0]
