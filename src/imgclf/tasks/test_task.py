"""``test(cfg)``: evaluate a checkpoint of the experiment on one split and write the test report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from imgclf.abstain import Abstain
from imgclf.data.folder import FolderSource, Splits
from imgclf.data.preprocessing import Preprocessing
from imgclf.errors import CheckpointError, DataError
from imgclf.experiment.checkpoint import file_stamp, load_checkpoint
from imgclf.models.classifier import Classifier, with_tta
from imgclf.models.ood_tap import checkpoint_tap
from imgclf.reporting import cam, explain, report
from imgclf.runtime import resolve_device, tune_malloc
from imgclf.tasks import build, depth_budget, frozen_budget, inputs, loggers
from imgclf.tasks.batch_size import batch_for_evaluation
from imgclf.tasks.calibration import LOCK_HINT, calibrate, load_weights, outputs
from imgclf.tasks.config_check import check_config, expand_user_paths
from imgclf.tasks.folders import config_name, experiment_dir

log = logging.getLogger(__name__)


def test(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt`` of the experiment on ``cfg.split``; writes ``test*/`` and returns metrics.json's content.

    The checkpoint alone decides the classes, input size and normalization, so a report on other data
    (``dataset.root=...``) evaluates the model as it was trained.

    Raises:
        ImgclfError: no such checkpoint, split or data; the message says what to do.
    """
    expand_user_paths(cfg)
    check_config(cfg)
    if cfg.tune_malloc:
        tune_malloc()
    device = resolve_device(cfg.device)
    exp = experiment_dir(cfg)
    path = {"best": exp.best, "last": exp.last}.get(str(cfg.ckpt), Path(str(cfg.ckpt)))
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint at {path.resolve()}: train it first with `python train.py -cn={config_name()}` "
            "(with the same overrides), or pass ckpt=<path to a .pt file>"
        )
    tracking = loggers.build(cfg)
    tracking.check()  # a tracking server that does not answer: said now, before any image is read
    stamp = file_stamp(path) if cfg.calibrate else None  # taken first: a file replaced while read is seen as changed
    payload = load_checkpoint(path)
    batch_for_evaluation(cfg, payload, path)  # loader.batch_size=auto: the batch it trained with
    tag = checkpoint_tag(path, exp.path, exp.best)
    classes = list(payload["class_names"])
    source = build.source(cfg)
    inputs.fill_num_classes(cfg, classes, source.root, found_in=str(path))
    own_data = payload["config"]["dataset"]["root"] == str(source.root)
    splits, recorded = inputs.splits(exp, source, classes, reuse=own_data)
    if tag and own_data:
        warn_if_split_differently(payload["config"]["dataset"], cfg.dataset, path)
    split = split_to_test(cfg.split, splits, source)
    prep = Preprocessing.from_checkpoint(payload)
    cfg.dataset.image_size = prep.image_size  # the size it was trained at (a model may be built for it; auto is past)
    frozen_budget.follow(cfg, payload["config"])  # what trainer.budget chose: backbones, depth
    depth_budget.follow(cfg, payload["config"])
    model = Classifier(instantiate(cfg.model), payload["mean"], payload["std"])
    load_weights(model, payload, path)
    model.to(device)
    if cfg.calibrate and path.resolve().parent != exp.path.resolve():
        raise CheckpointError(
            f"calibrate=true would write a temperature into {path.resolve()}, which is not a "
            f"checkpoint of experiment {exp.path.name}: calibrate it in its own experiment"
        )
    with build.frozen_passes(cfg, model, device):  # class activation maps (below) need PyTorch's backbone
        if cfg.calibrate:
            with exp.lock(LOCK_HINT):  # a training run of the experiment would replace the checkpoint
                payload = calibrate(cfg, exp, path, payload, model, device, stamp)  # the temperature shipped
        loaded = inputs.load(cfg, source, splits, (split,), prep)
        inputs.check_unchanged(recorded, loaded, refuse=False)
        dataset = inputs.split_dataset(cfg, loaded[split], prep, cfg.augmentation.eval)
        evaluated = with_tta(model, cfg.tta)
        with checkpoint_tap(evaluated, payload) as tap:  # the "not sure" OOD score
            found = outputs(cfg, evaluated, dataset, device, desc=split)
    info = {
        "split": split,
        "checkpoint": str(path.resolve()),
        "epoch": payload["state"]["epoch"],
        "data_root": str(source.root),
        "experiment": payload["experiment"],
        "tta": cfg.tta,
    }
    result = report.SplitResult(
        found,
        classes,
        [p for p, _ in loaded[split].samples],
        lambda i: inputs.picture(dataset, i),
        info,
        temperature=float(payload.get("temperature", 1.0)),
        display_names=payload.get("display_names") or {},
        abstain=Abstain.from_dict(payload.get("abstain")),
        ood_scores=tap.scores().double().numpy(),
    )
    folder = exp.path / (report_folder(split, None if own_data else source.root) + (f"_ckpt-{tag}" if tag else ""))
    if tag:
        log.info(
            "%s is not the experiment's best.pt: its report goes to %s, and the experiment's own report and "
            "TensorBoard run are left as they are",
            path,
            folder,
        )
    metrics = report.write(
        folder,
        result,
        top_k=cfg.report.top_k,
        bootstrap=cfg.report.bootstrap,
        mistakes=cfg.report.mistakes,
        tensorboard=None if tag or not tracking.tensorboard else exp.tensorboard_dir,
        step=payload["state"]["epoch"],
        explained=explain.Explain(
            pairs=cfg.report.confused_pairs,
            cams=cfg.report.cams,
            cams_per_class=cfg.report.cams_per_class,
            maker=cam.CamMaker(model, cfg.report.cam_method) if cfg.report.cams or cfg.report.cams_per_class else None,
        ),
    )
    log.info("\n%s\nreport: %s", report.format_table(metrics, classes), folder / "report.md")
    if not tag:  # the experiment's own report, as in TensorBoard
        loggers.log_report(cfg, tracking, exp.path, metrics, folder, payload["state"]["epoch"])
    return metrics


def checkpoint_tag(path: Path, experiment: Path, best: Path) -> str:
    """'' for the experiment's own ``best.pt`` (its report is the experiment's); else a name for the checkpoint:
    its stem when it lies in the experiment folder (``last``), else ``<its folder>-<stem>``."""
    path = path.resolve()
    if path == best.resolve():
        return ""
    name = path.stem if path.parent == experiment.resolve() else f"{path.parent.name}-{path.stem}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


SPLIT_KEYS = ("split_seed", "val_fraction", "test_fraction", "val_from", "folds", "fold")


def warn_if_split_differently(theirs: Any, ours: Any, path: Path) -> None:
    """A checkpoint of another experiment, evaluated on this one's split of the same folder: when it carved its
    splits otherwise, it may have trained on some of these test images."""
    changed = [
        f"dataset.{k}: {theirs.get(k)!r} (its run) vs {ours.get(k)!r}"
        for k in SPLIT_KEYS
        if theirs.get(k) != ours.get(k)
    ]
    if changed:
        log.warning(
            "%s split the same folder differently (%s): it may have trained on images of this split, "
            "so its numbers can be optimistic",
            path,
            "; ".join(changed),
        )


def report_folder(split: str, other_root: Path | None) -> str:
    """``test`` for the test split, ``test_<split>`` for another, ``test_<folder name>[_<split>]`` for
    data that is not the experiment's own."""
    if other_root is None:
        return "test" if split == "test" else f"test_{split}"
    return f"test_{other_root.name}" + ("" if split in ("test", "all") else f"_{split}")


def split_to_test(split: str, splits: Splits, source: FolderSource) -> str:
    """The split test.py evaluates; ``all`` is added to ``splits`` as the union of every split."""
    if split == "all":
        splits.samples["all"] = [s for name in ("train", "val", "test") for s in splits.samples.get(name) or []]
    if splits.samples.get(split):
        return split
    if split == "test" and splits.samples.get("val"):
        why = splits.carving.get("test") or f"no test/ folder and dataset.test_fraction={source.test_fraction:g}" + (
            ", which rounds to no image of the classes' sizes" if source.test_fraction else ""
        )
        log.warning(
            "%s has no test split (%s): evaluating the val split instead, which also chose the best "
            "checkpoint, so expect optimistic numbers. Set dataset.test_fraction to carve a test split "
            "from train.",
            source.root,
            why,
        )
        return "val"
    raise DataError(f"split '{split}' of {source.root} has no images; choose split=val, split=train or split=all")
