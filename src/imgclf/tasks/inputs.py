"""The data of a run, from the config: splits, decoded images, loaders and cached backbone features."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from imgclf.data.dataset import make_loader
from imgclf.data.doctor import examine, format_report, warn_about_leaks, write_report
from imgclf.data.folder import FolderSource, Splits, describe, remap
from imgclf.data.images import stored_sizes
from imgclf.data.prepare import LoadedSplit, changed_files, digests_by_path, load_splits
from imgclf.data.preprocessing import Preprocessing
from imgclf.data.reviewed import review_changes, undone
from imgclf.data.splits_file import read_splits
from imgclf.data.stats import channel_stats, class_weights
from imgclf.errors import ConfigError, DataError
from imgclf.experiment.folder import ExperimentDir
from imgclf.filenames import shown
from imgclf.models.classifier import Classifier
from imgclf.tasks import build
from imgclf.tasks.preprocess import SizeChoice, Stats
from imgclf.training.distributed import SINGLE, Distributed
from imgclf.training.engine import Stage, TrainLoader
from imgclf.training.features import extract, extract_views, why_not_cacheable

log = logging.getLogger(__name__)


def check_trainable(source: FolderSource) -> None:
    """Refuse to train the quickstart's digits settings on another folder (a source's ``foreign_root``):
    the user means their own photos, and those need a recipe made for them."""
    if not getattr(source, "foreign_root", False):
        return
    root = source.root.absolute()
    raise ConfigError(
        f"dataset.root={root} was given, but the default config trains the quickstart's handwritten digits "
        f"(8x8 pixels, a small CNN) and reads no other folder. {root} {describe(root)}.\n"
        "To train on your own photos, choose a recipe made for any folder:\n"
        f"  python train.py -cn=transfer dataset.root={root}   # pretrained EfficientNet-Lite: the best start\n"
        f"  python train.py -cn=scratch dataset.root={root}    # from scratch: small or unusual images\n"
        f"  python train.py dataset=image_folder dataset.root={root}   # the default model on your folder"
    )


def fill_num_classes(cfg: DictConfig, classes: list[str], root: Any, found_in: str = "the train folder") -> None:
    """``dataset.num_classes`` from the data (checked against the config when it is set)."""
    configured = cfg.dataset.num_classes
    if configured is not None and configured != len(classes):
        raise DataError(
            f"dataset.num_classes={configured}, but {found_in} ({root}) has {len(classes)} classes: {classes}; "
            "remove the override or fix the data"
        )
    cfg.dataset.num_classes = len(classes)


def splits(
    exp: ExperimentDir, source: FolderSource, classes: list[str], *, reuse: bool, scanned: Splits | None = None
) -> tuple[Splits, dict[str, str]]:
    """The experiment's saved splits (and recorded file hashes) when reusing them, else a fresh
    scan (``scanned``, or the source scanned now, with ``dataset.exclude`` / ``relabel`` applied) mapped onto
    ``classes``. With ``dataset.bad_files=skip`` a saved file that is gone is left to :func:`load` (a bad file,
    skipped) instead of refused. Resuming (``scanned`` given) with lists that now leave out or relabel other
    images than splits.csv recorded is refused."""
    if reuse and exp.splits.exists():
        saved, digests = read_splits(exp.splits, classes, missing_ok=source.bad_files == "skip")
        if scanned is not None:  # resuming a training run
            check_same_review(source, saved, scanned, exp.splits)
        return saved, digests
    return remap(source.review(scanned if scanned is not None else source.scan()), classes), {}


def check_same_review(source: FolderSource, saved: Splits, scanned: Splits, path: Any) -> None:
    """Refuse to resume when ``dataset.exclude`` / ``dataset.relabel``, applied now to the recorded splits, leave
    out or relabel other images than splits.csv recorded (a list edited, added or removed since)."""
    raw = replace(saved, samples=undone(saved.samples, saved.excluded, saved.given), excluded=[], given={})
    known = {p for items in scanned.samples.values() for p, _ in items}
    changes = review_changes(saved, source.review(raw, known))
    if changes:
        raise DataError(
            f"cannot resume: the reviewed lists differ from what {path} recorded: {'; '.join(changes)}. Resuming "
            "would train on other images or labels: use experiment=<new name> or overwrite=true, or put the lists "
            "back as they were"
        )


def load(
    cfg: DictConfig,
    source: FolderSource,
    splits: Splits,
    names: tuple[str, ...],
    prep: Preprocessing | SizeChoice,
    recorded: dict[str, str] | None = None,
) -> dict[str, LoadedSplit]:
    """Decode (or find in the cache) the splits in ``names`` to the squares of ``prep.decode_size``; files whose
    content differs from ``recorded`` (splits.csv's SHA-1s) are bad files (see ``prepare.load_splits``)."""
    return load_splits(
        splits,
        build.cache(cfg),
        prep.decode_size,
        names=names,
        bad_files=source.bad_files,
        resize=prep.resize,
        recorded=recorded,
    )


def train_sizes(cfg: DictConfig, scanned: Splits) -> list[tuple[int, int] | None]:
    """The stored (width, height) of every train image of ``scanned``, read from the file headers
    (remembered per file list)."""
    paths = [p for p, _ in scanned.samples["train"]]
    return [tuple(s) if s else None for s in build.cache(cfg).memo(paths, "sizes", lambda: stored_sizes(paths))]


def check_unchanged(recorded: dict[str, str], loaded: dict[str, LoadedSplit], *, refuse: bool) -> None:
    """Compare the files used with the hashes splits.csv recorded: refuse to resume on changed data, or warn."""
    used = {path for split in loaded.values() for path, _ in split.samples}
    changed = [p for p in changed_files(recorded, digests_by_path(loaded)) if p in used]
    if not changed:
        return
    message = f"{len(changed)} file(s) changed since this experiment's splits.csv was written, e.g. {shown(changed[0])}"
    if refuse:
        raise DataError(
            message + "; resuming would train on different data: use experiment=<new name> or "
            "overwrite=true, or set dataset.bad_files=skip to resume without the changed files"
        )
    log.warning("%s; results are not comparable with earlier ones", message)


def prepare(
    cfg: DictConfig,
    exp: ExperimentDir,
    source: FolderSource,
    classes: list[str],
    size: SizeChoice,
    *,
    scanned: Splits,
    resuming: bool,
    writer: bool = True,
) -> tuple[Splits, dict[str, LoadedSplit]]:
    """Splits (reused when resuming, else ``scanned``), every split decoded once, checked, and the doctor's report
    (written by the ``writer``: rank 0 of a distributed run)."""
    found, recorded = splits(exp, source, classes, reuse=resuming, scanned=scanned)
    # bad_files=skip: a file changed (or gone) since splits.csv is left out like an unreadable one, not refused
    loaded = load(
        cfg, source, found, ("train", "val", "test"), size, recorded=recorded if source.bad_files == "skip" else None
    )
    check_unchanged(recorded, loaded, refuse=True)
    if not loaded["val"].samples:
        raise DataError(f"no validation images in {source.root}: {_why_no_val(source, found)}")
    health = examine(found, {n: s.report for n, s in loaded.items()}, root=str(source.root), bad_files=source.bad_files)
    if writer:
        exp.path.mkdir(parents=True, exist_ok=True)
        write_report(health, exp.path / "doctor.json")
        log_data_table(format_report(health), str(exp.path / "doctor.json"))
        warn_about_leaks(health)
        warn_about_absent_classes(loaded["val"], classes)
    return found, loaded


_last_data_table: list[str] = []  # the table this process logged last (jobs of a sweep run one after another)


def log_data_table(table: str, report: str) -> None:
    """The data table, logged once per process: the next jobs of a sweep over the same data say so in one line."""
    if _last_data_table and _last_data_table[-1] == table:
        log.info("data: as in the previous job (%s)", report)
        return
    _last_data_table[:] = [table]
    log.info("data:\n%s", table)


def _why_no_val(source: FolderSource, found: Splits) -> str:
    """Why the val split is empty: every file unusable, a fraction that rounds to 0 images, or no val at all."""
    if found.samples.get("val"):
        return "every val image is unusable (dataset.bad_files=skip left them out)"
    if found.carving.get("val"):
        return found.carving["val"]
    return (
        f"no val/ folder and dataset.val_fraction={source.val_fraction:g}: set dataset.val_fraction "
        "(e.g. 0.15) or add a val/ folder"
    )


def warn_about_absent_classes(val: LoadedSplit, classes: list[str]) -> None:
    """Say once which classes val lacks: val/f1 (macro) averages the classes it has (docs/reliability.md J8)."""
    present = {label for _, label in val.samples}
    absent = [name for i, name in enumerate(classes) if i not in present]
    if absent:
        log.warning(
            "the val split has no images of %s: val/f1 averages the %d other classes",
            ", ".join(absent),
            len(classes) - len(absent),
        )


def train_stats(cfg: DictConfig, train: LoadedSplit, size: SizeChoice) -> Stats:
    """Per-channel mean and std of the train split's cached squares (remembered per file list in the cache)."""
    paths = [p for p, _ in train.samples]
    images = train.images.numpy() if train.images is not None else None
    side, mode = size.decode_size, train.resize
    name = f"stats-{side}px" + ("" if mode == "squash" else f"-{mode}")
    digests = [train.report.digests[row] for row in train.rows]  # read while loading: no second pass over the files
    stats = build.cache(cfg).memo(paths, name, lambda: channel_stats(images, train.rows, paths, side, mode), digests)
    mean, std = stats
    return tuple(mean), tuple(std)


def balance(cfg: DictConfig, train: LoadedSplit, num_classes: int) -> tuple[list[float] | None, list[float] | None]:
    """``imbalance``: (class weights for the loss, sample weights for a class-balanced sampler)."""
    labels = [label for _, label in train.samples]
    weights = class_weights(labels, num_classes)
    if cfg.imbalance == "weighted_loss":
        log.info("class weights for the loss: %s", [round(w, 3) for w in weights])
        return weights, None
    if cfg.imbalance == "weighted_sampler":
        return None, [weights[label] for label in labels]
    return None, None


def split_dataset(cfg: DictConfig, split: LoadedSplit, prep: Preprocessing, node: Any, bad_files: str = "stop") -> Any:
    """The split as a dataset with the transform of an ``augmentation`` node, cropped to the input size;
    ``bad_files=skip`` drops a sample that fails to load while training (test.py keeps ``stop``: its report
    pairs every output with its file)."""
    return split.dataset(
        prep.decode_size, prep.view(build.transform(node)), batched=cfg.loader.batch_augment, bad_files=bad_files
    )


def train_loaders(
    cfg: DictConfig,
    loaded: dict[str, LoadedSplit],
    prep: Preprocessing,
    device: torch.device,
    sample_weights: list[float] | None = None,
    group: Distributed = SINGLE,
) -> tuple[TrainLoader, TrainLoader]:
    """The shuffled (and augmented) train loader and the val loader (of this rank's share of the data)."""
    pin = device.type == "cuda" if cfg.loader.pin_memory == "auto" else bool(cfg.loader.pin_memory)
    loaders = []
    for split, transform in (("train", cfg.augmentation.train), ("val", cfg.augmentation.eval)):
        dataset = split_dataset(cfg, loaded[split], prep, transform, cfg.dataset.bad_files)
        if split == "train" and transform is not None and dataset.batch_op is None:
            log.info("augmentation runs image by image: %s", dataset.why_per_image)
        loaders.append(
            make_loader(
                dataset,
                batch_size=cfg.loader.batch_size,
                shuffle=split == "train",
                seed=cfg.seed,
                num_workers=cfg.loader.num_workers,
                pin_memory=pin,
                timeout=cfg.loader.timeout,
                empty_batches=split == "train",
                weights=sample_weights if split == "train" else None,
                world_size=group.world_size,
                rank=group.rank,
            )
        )
    return loaders[0], loaders[1]


def picture(dataset: Any, index: int) -> np.ndarray:
    """Sample ``index`` of an image dataset as the (H, W, 3) uint8 array the model saw."""
    index = dataset.served_index(index) if hasattr(dataset, "served_index") else index  # after dropped samples
    return dataset[index][0].permute(1, 2, 0).numpy()


def stages(
    cfg: DictConfig,
    model: Classifier,
    train_loader: TrainLoader,
    val_loader: TrainLoader,
    device: torch.device,
    sample_weights: list[float] | None,
    batch_mix: bool,
    *,
    train_split: LoadedSplit,
    prep: Preprocessing,
    start_epoch: int,
    group: Distributed = SINGLE,
) -> list[Stage]:
    """What trains in which epochs. Without ``trainer.cache_features``: the model on the loaders, every epoch.

    With it: the head on loaders of precomputed backbone features, for every epoch, or with
    ``model.unfreeze_at_epoch`` K for the epochs before K, then the whole model on the image loaders (its
    random train augmentation starts there; the cached features are of ``train_split`` served with the eval
    transform, the un-augmented train images, unless ``trainer.feature_views`` > 1). ``best.pt`` is one for the whole run, so the fine-tuned
    network replaces the head-only one only when it validates better. A run resumed at or after K computes
    no features. Early stopping during the head epochs ends the run (no fine-tuning).
    """
    whole = Stage(model, train_loader, val_loader, [model, val_loader], cfg.epochs)  # the val loader names the epoch
    if not cfg.trainer.cache_features:
        return [whole]
    views = cfg.trainer.feature_views
    reason = why_not_cacheable(model, cfg.augmentation.train is not None, batch_mix, views)
    if reason is None and cfg.trainer.ema_decay is not None:
        reason = "trainer.ema_decay is not supported with cached features yet (set trainer.ema_decay=null)"
    if reason:
        raise ConfigError(f"trainer.cache_features=true cannot apply: {reason}")
    unfreeze = getattr(model.net, "unfreeze_at_epoch", None)
    until = cfg.epochs if unfreeze is None else min(unfreeze, cfg.epochs)
    if start_epoch >= until:
        log.info(
            "resuming at epoch %d, after the epochs on cached features: the whole network trains on images",
            start_epoch + 1,
        )
        return [whole]
    images = (
        train_loader.dataset
        if views > 1 or unfreeze is None
        else split_dataset(cfg, train_split, prep, cfg.augmentation.eval, cfg.dataset.bad_files)
    )
    in_order = make_loader(images, batch_size=cfg.loader.batch_size, shuffle=False)  # per sample
    options = {"progress": cfg.progress, "channels_last": cfg.trainer.channels_last}
    whole_val = (
        make_loader(val_loader.dataset, batch_size=cfg.loader.batch_size, shuffle=False) if group.active else val_loader
    )  # features of every val image; the head's val loader shares them out
    started = time.perf_counter()
    with build.frozen_passes(cfg, model, device):
        train = extract_views(model, in_order, device, views, **options)
        val = extract(model, whole_val, device, desc="features val", **options)
    seconds = time.perf_counter() - started
    log.info(
        "cached backbone features of %d image(s) x %d cop%s in %.0f s (%.0f ms per image pass): epochs 1-%d train "
        "only the head%s",
        len(train),
        views,
        "y" if views == 1 else "ies (epoch e reads copy e mod views)",
        seconds,
        1000 * seconds / max(1, len(train) * views + len(val)),
        until,
        f", epochs {until + 1}-{cfg.epochs} the whole network on images" if until < cfg.epochs else "",
    )
    shares = {"world_size": group.world_size, "rank": group.rank}  # every rank computed every feature
    loaders = (
        make_loader(
            train, batch_size=cfg.loader.batch_size, shuffle=True, seed=cfg.seed, weights=sample_weights, **shares
        ),
        make_loader(val, batch_size=cfg.loader.batch_size, shuffle=False, **shares),
    )
    head = Stage(model.net.head, loaders[0], loaders[1], [train], until)
    return [head, whole] if until < cfg.epochs else [head]
