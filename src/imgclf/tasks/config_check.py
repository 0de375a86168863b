"""Checks of the composed config that Hydra's struct mode cannot make: types, ranges and
combinations. They run before any data is read and name the key that is wrong.

Each key is validated here and only here; the lists of allowed words come from the code that uses them.
"""

from __future__ import annotations

import difflib
import os
from numbers import Real
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from imgclf.abstain import GOALS, OOD_SCORES
from imgclf.data.folder import check_fractions
from imgclf.data.folds import check_fold_keys
from imgclf.data.images import RESIZE_MODES
from imgclf.data.prepare import BAD_FILE_POLICIES
from imgclf.errors import ConfigError
from imgclf.experiment.names import check_name
from imgclf.models.classifier import TTA_MODES
from imgclf.reporting.cam import CAM_METHODS
from imgclf.tasks.preprocess import AUTO, NORMALIZE
from imgclf.training.device import AMP_MODES
from imgclf.training.onnx_twin import ENGINES, onnxruntime_installed

MONITORS = {"val/acc": "max", "val/f1": "max", "val/loss": "min"}
DEVICES = ("auto", "cpu", "cuda", "mps")
SPLITS = ("train", "val", "test", "all")
# the base config every recipe extends: its keys are the only ones imgclf reads, so `+epochz=3` (an added key,
# which Hydra's struct mode lets through) would be ignored; the config groups' own keys are checked when built
BASE_CONFIG = Path(__file__).resolve().parents[3] / "conf" / "train.yaml"
# read key by key, never instantiated
PLAIN_SECTIONS = ("trainer", "loader", "report", "paths", "preview", "audit", "lr_find", "abstain")


def expand_user_paths(cfg: DictConfig) -> None:
    """``~`` in the ``paths`` folders expanded in place, before any of them is used: a quoted override
    (``paths.experiments='~/exp'``) reaches the config as written (``hydra.run.dir`` expands it with the
    ``imgclf.user_path`` resolver; ``dataset.root`` is expanded where the data source is built)."""
    for key in ("experiments", "runs", "cache", "project_root"):
        value = cfg.paths.get(key)
        if isinstance(value, str) and value.startswith("~"):
            cfg.paths[key] = os.path.expanduser(value)


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the first key with a bad value."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"no value for {', '.join(missing)}: set it on the command line, e.g. {missing[0]}=...")
    check_name(cfg.experiment)  # one folder name: `..`, `a/b` or an empty $EXP would reach outside (J1)
    _known_keys(cfg)
    _int(cfg, "epochs", minimum=1)
    _int(cfg, "seed", minimum=0)
    _batch_size(cfg)
    _int(cfg, "loader.num_workers", minimum=0)
    _image_size(cfg)
    if cfg.dataset.num_classes is not None:
        _int(cfg, "dataset.num_classes", minimum=2)
    _int(cfg, "trainer.max_nonfinite", minimum=1)
    _positive_number(cfg, "loader.timeout", allow_zero=True)
    _positive_number(cfg, "trainer.dist_timeout")
    _int(cfg, "report.top_k", minimum=1)
    _int(cfg, "report.bootstrap", minimum=0)
    _int(cfg, "report.mistakes", minimum=0)
    _int(cfg, "report.confused_pairs", minimum=0)
    _int(cfg, "report.cams", minimum=0)
    _int(cfg, "report.cams_per_class", minimum=0)
    _choice(cfg, "report.cam_method", tuple(CAM_METHODS))
    if "preview" in cfg:  # imgclf-preview's (a config saved before it has none)
        _int(cfg, "preview.batches", minimum=1)
        _int(cfg, "preview.images", minimum=1)
    for key in (
        "deterministic",
        "overwrite",
        "progress",
        "tune_malloc",
        "calibrate",
        "report.figures",
        "trainer.sync_bn",
    ):
        _bool(cfg, key)
    device = str(cfg.device)
    if device not in DEVICES and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(f"device={device!r}: expected one of {', '.join(DEVICES)} or cuda:N")
    if cfg.monitor not in MONITORS:
        raise ConfigError(f"monitor={cfg.monitor!r}: expected one of {sorted(MONITORS)}")
    if cfg.mode not in ("min", "max"):
        raise ConfigError(f"mode={cfg.mode!r}: expected min or max")
    if MONITORS[cfg.monitor] != cfg.mode:
        raise ConfigError(
            f"monitor={cfg.monitor} with mode={cfg.mode} would keep the worst checkpoint; "
            f"use mode={MONITORS[cfg.monitor]}"
        )
    _resume_or_ckpt(cfg, "resume", ("auto", "never"))
    _resume_or_ckpt(cfg, "ckpt", ("best", "last"))
    if cfg.split not in SPLITS:
        raise ConfigError(f"split={cfg.split!r}: expected one of {', '.join(SPLITS)}")
    _choice(cfg, "dataset.bad_files", BAD_FILE_POLICIES)
    _choice(cfg, "dataset.normalize", NORMALIZE)
    _choice(cfg, "imbalance", ("none", "weighted_loss", "weighted_sampler"))
    _choice(cfg, "tta", TTA_MODES)
    _choice(cfg, "loader.cache", ("disk", "memory", "none"))
    _fraction(cfg, "dataset.val_fraction")
    _fraction(cfg, "dataset.test_fraction")
    check_fractions(cfg.dataset.val_fraction, cfg.dataset.test_fraction)
    check_fold_keys(cfg.dataset.get("folds"), cfg.dataset.get("fold"))
    _normalization(cfg)
    _trainer(cfg)
    if "audit" in cfg:  # imgclf-audit's (a config saved before it has none)
        _audit(cfg)
    if "abstain" in cfg:  # a config saved before it has none
        _abstain(cfg)
    _positive_number(cfg, "optimizer.lr")
    for key in ("weight_decay", "momentum"):
        if key in cfg.optimizer:
            _positive_number(cfg, f"optimizer.{key}", allow_zero=True)


def _known_keys(cfg: DictConfig) -> None:
    """Refuse a key that imgclf never reads (added with ``+key=``), naming the closest known key."""
    if not BASE_CONFIG.is_file():  # an installed copy without its conf/: nothing to compare against
        return
    base = OmegaConf.load(BASE_CONFIG)
    groups = {d if isinstance(d, str) else next(iter(d)) for d in base.get("defaults", [])}
    known = (set(base) - {"defaults", "hydra"}) | (groups - {"_self_"})

    def check(values: DictConfig, schema: set[str], prefix: str, nested: DictConfig | None) -> None:
        for key in values:
            name = f"{prefix}{key}"
            if key not in schema:
                close = difflib.get_close_matches(str(key), sorted(schema), n=1)
                hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
                raise ConfigError(
                    f"{name}: imgclf has no such key{hint}, so it would be ignored; the keys here are "
                    f"{', '.join(prefix + k for k in sorted(schema))}"
                )
            below = nested.get(key) if nested is not None else None
            if isinstance(below, DictConfig) and isinstance(values.get(key), DictConfig):
                check(values[key], set(below), f"{name}.", below)

    check(cfg, known, "", None)
    for section in PLAIN_SECTIONS:
        if isinstance(cfg.get(section), DictConfig):
            check(cfg[section], set(base[section]), f"{section}.", base[section])


def _get(cfg: DictConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _int(cfg: DictConfig, key: str, minimum: int) -> None:
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r}: expected a whole number >= {minimum}")


def _bool(cfg: DictConfig, key: str) -> None:
    if not isinstance(_get(cfg, key), bool):
        raise ConfigError(f"{key}={_get(cfg, key)!r}: expected true or false")


def _positive_number(cfg: DictConfig, key: str, allow_zero: bool = False) -> None:
    value = _get(cfg, key)
    ok = isinstance(value, Real) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"{key}={value!r}: expected a number {'>= 0' if allow_zero else '> 0'}")


def _fraction(cfg: DictConfig, key: str) -> None:
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < 1:
        raise ConfigError(f"{key}={value!r}: expected a fraction in [0, 1)")


def _normalization(cfg: DictConfig) -> None:
    for key in ("dataset.mean", "dataset.std"):
        values = _get(cfg, key)
        if values is None or len(values) != 3 or not all(isinstance(v, Real) for v in values):
            raise ConfigError(f"{key}={values!r}: expected three numbers (one per RGB channel)")
    if any(v <= 0 for v in cfg.dataset.std):
        raise ConfigError(f"dataset.std={list(cfg.dataset.std)!r}: every value must be > 0")


def _image_size(cfg: DictConfig) -> None:
    if cfg.dataset.image_size != AUTO:
        _int(cfg, "dataset.image_size", minimum=8)
    if "max_image_size" in cfg.dataset:
        _int(cfg, "dataset.max_image_size", minimum=8)
    if "native_scale" in cfg.dataset:
        value = cfg.dataset.native_scale
        if isinstance(value, bool) or not isinstance(value, Real) or not 1 <= value <= 2:
            raise ConfigError(
                f"dataset.native_scale={value!r}: expected a number in [1, 2] (1: a pretrained model "
                "sees the images at most at its native size; 1.5: up to 1.5x, enlarging them up to 1.5x)"
            )
    if "resize" in cfg.dataset:
        _choice(cfg, "dataset.resize", RESIZE_MODES)
    if "crop_fraction" in cfg.dataset:
        value = cfg.dataset.crop_fraction
        if isinstance(value, bool) or not isinstance(value, Real) or not 0.5 <= value <= 1:
            raise ConfigError(
                f"dataset.crop_fraction={value!r}: expected a fraction in [0.5, 1] (0.875: evaluation "
                "sees the centre 87.5% of the resized shorter side)"
            )


def _batch_size(cfg: DictConfig) -> None:
    """A number, or ``auto`` (found on the GPU by tasks.batch_size, within ``max_batch_size``)."""
    if cfg.loader.batch_size != AUTO:
        value = cfg.loader.batch_size
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"loader.batch_size={value!r}: expected a whole number >= 1, or auto (on CUDA: the largest batch "
                "that trains on the GPU)"
            )
    if "max_batch_size" in cfg.loader:  # a config saved before batch_size=auto has none
        _int(cfg, "loader.max_batch_size", minimum=2)
    if cfg.loader.get("auto_reference_batch") is not None:
        _int(cfg, "loader.auto_reference_batch", minimum=1)


def _resume_or_ckpt(cfg: DictConfig, key: str, words: tuple[str, ...]) -> None:
    value = str(_get(cfg, key))
    if value not in words and not Path(value).expanduser().is_file():
        raise ConfigError(f"{key}={value!r}: expected {' or '.join(words)} or the path of an existing checkpoint file")


def _schedule_stretches(cfg: DictConfig) -> None:
    """A budget lays the schedule over the steps it plans through the torch scheduler's closed form: one without it
    is refused here, before any image is decoded, rather than when the first plan is made (Scheduler.follow_plan
    says the same for a scheduler built otherwise)."""
    scheduler = cfg.get("scheduler") or {}
    factory = scheduler.get("factory") if isinstance(scheduler, DictConfig) else None
    target = factory.get("_target_") if isinstance(factory, DictConfig) else None
    if target is None or scheduler.get("steps_on_metric"):
        return
    try:
        cls = get_class(str(target))
    except Exception:  # noqa: BLE001 - a name that does not import is reported when the scheduler is built
        return
    if not hasattr(cls, "_get_closed_form_lr"):
        raise ConfigError(
            f"trainer.budget cannot stretch scheduler.factory {target} over the planned steps (it has no closed "
            "form): use scheduler=cosine, step or none (or LinearLR, ExponentialLR, PolynomialLR, MultiStepLR), "
            "or trainer.budget=null"
        )


def _choice(cfg: DictConfig, key: str, allowed: tuple[str, ...]) -> None:
    if _get(cfg, key) not in allowed:
        raise ConfigError(f"{key}={_get(cfg, key)!r}: expected one of {', '.join(allowed)}")


def _audit(cfg: DictConfig) -> None:
    _int(cfg, "audit.folds", minimum=2)
    _int(cfg, "audit.seed", minimum=0)
    _bool(cfg, "audit.include_test")
    _choice(cfg, "audit.rank_by", ("self_confidence", "normalized_margin", "confidence_weighted_entropy"))
    value = cfg.audit.duplicate_threshold
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value <= 1:
        raise ConfigError(f"audit.duplicate_threshold={value!r}: expected a pixel correlation in (0, 1]")
    _int(cfg, "audit.duplicate_neighbours", minimum=1)
    _int(cfg, "audit.gallery_rows", minimum=1)
    _int(cfg, "audit.gallery_pages", minimum=0)


def _abstain(cfg: DictConfig) -> None:
    """``abstain.*``: the thresholds are chosen on calibrated val probabilities, so they need ``calibrate=true``."""
    for key, allowed in (("abstain.goal", GOALS), ("abstain.ood", OOD_SCORES)):
        if _get(cfg, key) is not None and _get(cfg, key) not in allowed:
            raise ConfigError(f"{key}={_get(cfg, key)!r}: expected null or one of {', '.join(allowed)}")
    _int(cfg, "abstain.min_answered", minimum=1)
    for key in ("abstain.ood_k", "abstain.ood_bank"):
        _int(cfg, key, minimum=1)
    if cfg.abstain.ood == "knn" and cfg.abstain.ood_k > cfg.abstain.ood_bank:
        raise ConfigError(
            f"abstain.ood_k={cfg.abstain.ood_k} > abstain.ood_bank={cfg.abstain.ood_bank}: the kNN score compares "
            "with the k-th nearest of the bank's training images; make ood_bank larger or ood_k smaller"
        )
    for key in ("abstain.target", "abstain.ood_keep"):
        value = _get(cfg, key)
        if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value <= 1:
            raise ConfigError(f"{key}={value!r}: expected a share in (0, 1], e.g. 0.95")
    if (cfg.abstain.goal is not None or cfg.abstain.ood is not None) and not cfg.calibrate:
        raise ConfigError(
            f"abstain.goal={cfg.abstain.goal} abstain.ood={cfg.abstain.ood}: the thresholds are chosen on val after "
            "the temperature is fitted; add calibrate=true (train.py after training, or test.py)"
        )


def _trainer(cfg: DictConfig) -> None:
    _int(cfg, "trainer.accumulate", minimum=1)
    _int(cfg, "trainer.feature_views", minimum=1)
    _choice(cfg, "trainer.amp", (*AMP_MODES, "auto"))
    _choice(cfg, "trainer.frozen_engine", ENGINES)
    if cfg.trainer.frozen_engine == "onnxruntime" and not onnxruntime_installed():
        raise ConfigError(
            "trainer.frozen_engine=onnxruntime: onnxruntime is not installed; pip install 'imgclf[deploy]', "
            "or set trainer.frozen_engine=auto (PyTorch when onnxruntime is missing)"
        )
    for key in ("trainer.channels_last", "trainer.compile", "trainer.cache_features"):
        _bool(cfg, key)
    decay = cfg.trainer.ema_decay
    if decay is not None and (isinstance(decay, bool) or not isinstance(decay, Real) or not 0 < decay < 1):
        raise ConfigError(f"trainer.ema_decay={decay!r}: expected a number between 0 and 1, or null")
    if cfg.trainer.clip_grad_norm is not None:
        _positive_number(cfg, "trainer.clip_grad_norm")
    if cfg.trainer.get("budget") is not None:  # minutes
        _positive_number(cfg, "trainer.budget")
        _schedule_stretches(cfg)
    if cfg.trainer.get("budget_min_epochs") is not None:
        _int(cfg, "trainer.budget_min_epochs", minimum=1)
    if cfg.trainer.early_stopping.patience is not None:
        _int(cfg, "trainer.early_stopping.patience", minimum=1)
    _positive_number(cfg, "trainer.early_stopping.min_delta", allow_zero=True)
