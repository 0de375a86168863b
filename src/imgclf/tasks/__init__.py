"""The composition root: the only module that reads the config and instantiates from it.

``train(cfg)`` and ``test(cfg)`` are what ``train.py`` and ``test.py`` call.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from imgclf.reporting import report
from imgclf.tasks import resolvers
from imgclf.experiment.checkpoint import load_checkpoint, save_atomic, set_rng_states
from imgclf.tasks.config_check import check_config
from imgclf.data.cache import DecodeCache
from imgclf.data.dataset import make_loader
from imgclf.data.doctor import diagnose, examine, format_report, warn_about_leaks, write_report
from imgclf.data.folder import FolderSource, Splits, remap
from imgclf.data.prepare import LoadedSplit, changed_files, digests_by_path, load_splits
from imgclf.data.splits_file import read_splits, write_splits
from imgclf.data.stats import channel_stats, class_weights
from imgclf.training.engine import Diverged, Interrupted, Outputs, TrainState, collect, fit
from imgclf.reporting.statistics import fit_temperature, nll
from imgclf.errors import CheckpointError, ConfigError, DataError, ImgclfError, TrainingError
from imgclf.training.features import extract, extract_views, why_not_cacheable
from imgclf.experiment.folder import CheckpointWriter, ExperimentDir, check_resumable, is_finished
from imgclf.training.signals import StopOnSignal
from imgclf.models.classifier import Classifier, with_tta
from imgclf.experiment.run_log import BestFigures, RunLog
from imgclf.runtime import resolve_device, tune_malloc

log = logging.getLogger(__name__)
resolvers.register()  # before Hydra composes: train.py and test.py import this module first


def train(cfg: DictConfig) -> float | None:
    """Train (or resume) the experiment ``cfg`` describes. Returns the best monitored value."""
    return _user_errors_without_traceback(_train, cfg)


def test(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate a checkpoint of the experiment on ``cfg.split``; writes ``test/metrics.json``."""
    return _user_errors_without_traceback(_test, cfg)


def _train(cfg: DictConfig) -> float | None:
    check_config(cfg)
    if cfg.tune_malloc:
        tune_malloc()
    device = resolve_device(cfg.device)
    _seed_everything(cfg.seed, cfg.deterministic)
    exp = _experiment_dir(cfg)
    source = _source(cfg)
    classes = source.class_names()  # lists folders only: config errors surface before any decoding
    _fill_num_classes(cfg, classes, source.root)
    model, loss_fn = _model(cfg, source, device), instantiate(cfg.loss).to(device)
    optimizer, schedule = _optimizer_and_schedule(cfg, model)
    with exp.lock():
        payload = exp.resume_payload(str(cfg.resume), overwrite=cfg.overwrite)
        if payload is not None and is_finished(payload, cfg.epochs):
            return _report_finished(cfg, exp, payload)
        splits, loaded = _prepare_data(cfg, exp, source, classes, resuming=payload is not None)
        _normalize(cfg, source, loaded, model)
        loss_fn, sample_weights = _balance(cfg, loaded["train"], len(classes), loss_fn, device)
        ema = _ema(cfg, model)
        state = TrainState()
        if payload is not None:
            state = _restore(cfg, payload, classes, model, optimizer, schedule, ema)
        write_splits(splits, exp.splits, digests_by_path(loaded))
        OmegaConf.save(cfg, exp.config, resolve=True)
        train_loader, val_loader = _train_loaders(cfg, source, loaded, device, sample_weights)
        val_images = val_loader.dataset
        batch_mix = _batch_mix(cfg)
        trained, train_loader, val_loader = _maybe_cache_features(cfg, model, train_loader, val_loader, device,
                                                                  batch_mix is not None)
        scaler, trained = _precision_and_compile(cfg, trained, device, payload)
        meta = _checkpoint_meta(cfg, source, classes, model)
        writer = CheckpointWriter(exp, model, optimizer, schedule, meta, scaler, ema)
        figures = BestFigures(classes, lambda i: _picture(val_images, i), cfg.report.mistakes)
        run_log = RunLog(exp.metrics, exp.tensorboard_dir, start_epoch=state.epoch,
                         figures=figures if cfg.report.figures else None)
        run_log.hparams(_hparams(cfg, meta["num_parameters"]), [cfg.monitor, "val/acc", "val/loss", "val/f1"])
        if payload is not None:
            set_rng_states(payload["rng"])  # last, so nothing above consumes the restored streams
        log.info("training %s: %s, classes %s, %s on %s -> %s", cfg.experiment, splits.counts(), classes,
                 type(model.net).__name__, device, exp.path)
        with StopOnSignal() as stop:
            try:
                state = fit(trained, train_loader, val_loader, loss_fn, optimizer, schedule, epochs=cfg.epochs,
                            device=device, num_classes=len(classes), monitor=cfg.monitor, mode=cfg.mode,
                            state=state, checkpoints=writer, log=run_log, should_stop=stop, progress=cfg.progress,
                            patience=cfg.trainer.early_stopping.patience,
                            min_delta=cfg.trainer.early_stopping.min_delta, accumulate=cfg.trainer.accumulate,
                            clip_grad_norm=cfg.trainer.clip_grad_norm, amp=cfg.trainer.amp, scaler=scaler,
                            channels_last=cfg.trainer.channels_last, batch_mix=batch_mix, ema=ema,
                            max_nonfinite=cfg.trainer.max_nonfinite)
            except Interrupted as exc:
                log.warning("%s; wrote %s. Run the same command again to resume.", exc, exp.last)
                raise SystemExit(stop.exit_code) from None
            except (Diverged, torch.OutOfMemoryError, RuntimeError) as exc:
                raise _training_error(cfg, exc, device, exp) from None
            finally:
                run_log.close()
        if cfg.calibrate and exp.best.exists():
            best = load_checkpoint(exp.best)
            _load_weights(model, best, exp.best)
            _calibrate(cfg, exp, exp.best, best, model, device)
    log.info("best %s = %.4f at epoch %d; checkpoints in %s", cfg.monitor, state.best or float("nan"),
             state.best_epoch, exp.path)
    return state.best


def _training_error(cfg: DictConfig, exc: BaseException, device: torch.device, exp: ExperimentDir) -> BaseException:
    """The user's version of a fault in the middle of training (RELIABILITY E2-E4), or ``exc`` itself."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    kept = f"{exp.last} keeps the last finished epoch" if exp.last.exists() else "no checkpoint was written yet"
    if isinstance(exc, Diverged):
        return TrainingError(f"training diverged: {first}; {kept}. Lower optimizer.lr, set trainer.clip_grad_norm=1.0, "
                             "or check the inputs (dataset.normalize, bad images)")
    if isinstance(exc, torch.OutOfMemoryError):
        return TrainingError(
            f"out of memory on {device} with loader.batch_size={cfg.loader.batch_size} at "
            f"dataset.image_size={cfg.dataset.image_size} ({first}); {kept}. Lower loader.batch_size "
            "(trainer.accumulate=N keeps the effective batch), use trainer.amp=bf16 (or fp16 on CUDA), or a smaller "
            "dataset.image_size, then run the same command to resume")
    if "DataLoader" in first:
        return TrainingError(
            f"loading batches failed with loader.num_workers={cfg.loader.num_workers}: {first}; {kept}. A worker "
            "killed by the system usually ran out of memory or shared memory (/dev/shm): use loader.num_workers=0 or a "
            f"smaller loader.batch_size; a worker that hangs past loader.timeout={cfg.loader.timeout} s is stopped. "
            "Run the same command to resume")
    return exc


HPARAM_KEYS = ("optimizer.lr", "optimizer.weight_decay", "loader.batch_size", "epochs", "dataset.image_size", "seed")


def _hparams(cfg: DictConfig, num_parameters: int) -> dict[str, Any]:
    """What TensorBoard's HParams tab compares: the group choices (model=..., optimizer=...), the
    usual numbers, and every value overridden on the command line (what differs across sweep jobs)."""
    values: dict[str, Any] = {"parameters": num_parameters}
    for group in ("model", "optimizer", "scheduler", "loss"):  # without Hydra's choices: the class names
        values[group] = str(OmegaConf.select(cfg, f"{group}._target_", default="")).rsplit(".", 1)[-1]
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        values.update({group: str(choice) for group, choice in hydra_cfg.runtime.choices.items()
                       if not group.startswith("hydra") and choice is not None})
        bookkeeping = set(hydra_cfg.job.config.override_dirname.exclude_keys) - {"dataset.root"}
        overridden = [key for key in (o.split("=", 1)[0].lstrip("+~") for o in hydra_cfg.overrides.task)
                      if key not in bookkeeping]
    else:
        overridden = []
    for key in (*HPARAM_KEYS, *overridden):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not OmegaConf.is_config(value):
            values[key] = value
    return values


def _test(cfg: DictConfig) -> dict[str, Any]:
    check_config(cfg)
    if cfg.tune_malloc:
        tune_malloc()
    device = resolve_device(cfg.device)
    exp = _experiment_dir(cfg)
    path = {"best": exp.best, "last": exp.last}.get(str(cfg.ckpt), Path(str(cfg.ckpt)))
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint at {path.resolve()}: train it first with `python train.py -cn={_config_name()}` "
            "(with the same overrides), or pass ckpt=<path to a .pt file>"
        )
    payload = load_checkpoint(path)
    classes = list(payload["class_names"])
    source = _source(cfg)
    _fill_num_classes(cfg, classes, source.root, found_in=str(path))
    own_data = payload["config"]["dataset"]["root"] == str(source.root)
    splits, recorded = _splits(exp, source, classes, reuse=own_data)
    split = _split_to_test(cfg.split, splits, source)
    model = Classifier(instantiate(cfg.model), payload["mean"], payload["std"])
    _load_weights(model, payload, path)
    model.to(device)
    if cfg.calibrate:
        payload = _calibrate(cfg, exp, path, payload, model, device)  # the temperature of the model as shipped
    loaded = _load(cfg, source, splits, (split,), image_size=payload["image_size"])
    _check_unchanged(recorded, loaded, refuse=False)
    dataset = _serve(cfg, loaded[split], payload["image_size"], cfg.augmentation.eval)
    outputs = _outputs(cfg, with_tta(model, cfg.tta), dataset, device, desc=split)
    info = {"split": split, "checkpoint": str(path.resolve()), "epoch": payload["state"]["epoch"],
            "data_root": str(source.root), "experiment": payload["experiment"], "tta": cfg.tta}
    ev = report.Evaluation(outputs, classes, [p for p, _ in loaded[split].samples], lambda i: _picture(dataset, i),
                           info, temperature=float(payload.get("temperature", 1.0)),
                           display_names=payload.get("display_names") or {})
    folder = exp.path / _report_folder(split, None if own_data else source.root)
    metrics = report.write(folder, ev, top_k=cfg.report.top_k, bootstrap=cfg.report.bootstrap,
                           mistakes=cfg.report.mistakes, tensorboard=exp.tensorboard_dir,
                           step=payload["state"]["epoch"])
    log.info("\n%s\nreport: %s", report.format_table(metrics, classes), folder / "report.md")
    return metrics


def _report_folder(split: str, other_root: Path | None) -> str:
    """``test`` for the test split, ``test_<split>`` for another, ``test_<folder name>[_<split>]`` for
    data that is not the experiment's own."""
    if other_root is None:
        return "test" if split == "test" else f"test_{split}"
    return f"test_{other_root.name}" + ("" if split in ("test", "all") else f"_{split}")


def _picture(dataset: Any, index: int) -> np.ndarray:
    """Sample ``index`` of an image dataset as the (H, W, 3) uint8 array the model saw."""
    return dataset[index][0].permute(1, 2, 0).numpy()


def _outputs(cfg: DictConfig, model: torch.nn.Module, dataset: Any, device: torch.device, desc: str) -> Outputs:
    loader = make_loader(dataset, batch_size=cfg.loader.batch_size, shuffle=False, num_workers=cfg.loader.num_workers)
    return collect(model, loader, instantiate(cfg.loss).to(device), device=device, progress=cfg.progress, desc=desc)


def _calibrate(cfg: DictConfig, exp: ExperimentDir, path: Path, payload: dict[str, Any], model: Classifier,
               device: torch.device) -> dict[str, Any]:
    """Fit a temperature on the experiment's val split and store it in the checkpoint at ``path``."""
    if not exp.splits.exists():
        raise DataError(f"calibrate=true needs the experiment's val split, listed in {exp.splits}, which is missing")
    classes = list(payload["class_names"])
    splits, _ = read_splits(exp.splits, classes)
    if not splits.samples.get("val"):
        raise DataError(f"calibrate=true: {exp.splits} lists no val images to fit the temperature on")
    val = _load(cfg, _source(cfg), splits, ("val",), image_size=payload["image_size"])["val"]
    outputs = _outputs(cfg, model, _serve(cfg, val, payload["image_size"], cfg.augmentation.eval), device,
                       desc="calibrate on val")
    temperature = fit_temperature(outputs.logits, outputs.labels)
    before, after = nll(outputs.logits, outputs.labels), nll(outputs.logits, outputs.labels, temperature)
    payload = {**payload, "temperature": temperature,
               "calibration": {"split": "val", "samples": len(outputs.labels), "nll_before": before, "nll_after": after}}
    save_atomic(payload, path)
    log.info("calibrated on %d val images: temperature %.3f, NLL %.4f -> %.4f; stored in %s",
             len(outputs.labels), temperature, before, after, path)
    return payload


def doctor(cfg: DictConfig, project_root: Path | None = None) -> dict[str, Any]:
    """The dataset doctor's report for the dataset ``cfg`` names (see ``imgclf-doctor``)."""
    if project_root is not None and not cfg.paths.project_root:
        cfg.paths.project_root = str(project_root)
    source = _source(cfg)
    return diagnose(source, _cache(cfg, mode="none"), bad_files=source.bad_files)


def _user_errors_without_traceback(fn: Any, cfg: DictConfig) -> Any:
    try:
        return fn(cfg)
    except KeyboardInterrupt:  # before or after training: nothing to save
        log.warning("interrupted")
        raise SystemExit(130) from None
    except ImgclfError as exc:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra marks this job failed and runs the others
        log.error("%s: %s", type(exc).__name__, exc)
        raise SystemExit(1) from None


def _config_name() -> str:
    return HydraConfig.get().job.config_name if HydraConfig.initialized() else "<config>"


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    # fixed input sizes: unless runs must be bit-reproducible, let cuDNN pick the fastest kernels
    torch.backends.cudnn.benchmark = not deterministic


def _project_root(cfg: DictConfig) -> Path:
    """Where relative data paths point from: paths.project_root, else the folder holding conf/."""
    if cfg.paths.project_root:
        return Path(cfg.paths.project_root)
    if HydraConfig.initialized():
        for source in HydraConfig.get().runtime.config_sources:
            if source.provider == "main" and source.schema == "file":
                return Path(source.path).parent
    return Path.cwd()


def _experiment_dir(cfg: DictConfig) -> ExperimentDir:
    """Hydra's output dir (one per run or sweep job); TensorBoard mirrors it under paths.runs."""
    experiments = Path(cfg.paths.experiments)
    if HydraConfig.initialized():
        path = Path(HydraConfig.get().runtime.output_dir)
    else:
        path = experiments / cfg.experiment
    try:
        relative = path.resolve().relative_to(experiments.resolve())
    except ValueError:
        relative = Path(cfg.experiment)
    return ExperimentDir(path, Path(cfg.paths.runs) / relative)


def _source(cfg: DictConfig) -> FolderSource:
    root = Path(cfg.dataset.root).expanduser()
    if not root.is_absolute():
        root = (_project_root(cfg) / root).resolve()
    cfg.dataset.root = str(root)  # the saved config shows the folder actually used
    try:
        source = instantiate(cfg.dataset)
    except ImgclfError:
        raise
    except Exception as exc:
        raise ConfigError(f"could not build `dataset` ({cfg.dataset.get('_target_')}): {exc}") from exc
    cfg.dataset.mean, cfg.dataset.std = list(source.mean), list(source.std)  # normalize=imagenet fills them
    return source


def _fill_num_classes(cfg: DictConfig, classes: list[str], root: Path, found_in: str = "the train folder") -> None:
    configured = cfg.dataset.num_classes
    if configured is not None and configured != len(classes):
        raise DataError(
            f"dataset.num_classes={configured}, but {found_in} ({root}) has {len(classes)} classes: {classes}; "
            "remove the override or fix the data"
        )
    cfg.dataset.num_classes = len(classes)


def _model(cfg: DictConfig, source: FolderSource, device: torch.device) -> Classifier:
    """Build the model and check on two dummy images that it maps them to (2, num_classes) logits."""
    try:
        net = instantiate(cfg.model)
        _use_model_normalization(cfg, source, net)
        model = Classifier(net, source.mean, source.std)
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(2, 3, source.image_size, source.image_size, dtype=torch.uint8))
    except Exception as exc:
        raise ConfigError(f"could not build `model` ({cfg.model.get('_target_')}) for "
                          f"{source.image_size}px images: {exc}") from exc
    if tuple(out.shape) != (2, cfg.dataset.num_classes):
        raise ConfigError(f"model {cfg.model._target_} gives logits of shape {tuple(out.shape)}, "
                          f"expected (batch, {cfg.dataset.num_classes})")
    layout = torch.channels_last if cfg.trainer.channels_last else torch.preserve_format
    return model.to(device, memory_format=layout)


def _params(model: Classifier, lr: float) -> Any:
    """Parameter groups when the network has them (a backbone at its own learning rate)."""
    return model.net.param_groups(lr) if hasattr(model.net, "param_groups") else model.parameters()


def _use_model_normalization(cfg: DictConfig, source: FolderSource, net: torch.nn.Module) -> None:
    """Pretrained weights expect the normalization they were trained with, whatever the dataset says."""
    mean, std = getattr(net, "input_mean", None), getattr(net, "input_std", None)
    if mean is None or (tuple(mean), tuple(std)) == (source.mean, source.std):
        return
    log.info("model %s expects inputs normalized with mean %s, std %s: using them instead of the dataset's",
             type(net).__name__, list(mean), list(std))
    source.mean, source.std, source.normalize = tuple(mean), tuple(std), "custom"
    cfg.dataset.mean, cfg.dataset.std, cfg.dataset.normalize = list(mean), list(std), "custom"


def _optimizer_and_schedule(cfg: DictConfig, model: torch.nn.Module) -> tuple[Any, Any]:
    built = {}
    for group in ("optimizer", "scheduler"):
        try:
            factory = instantiate(cfg[group])
            built[group] = factory(_params(model, cfg.optimizer.lr)) if group == "optimizer" else factory(built["optimizer"])
        except Exception as exc:
            raise ConfigError(f"could not build `{group}` ({cfg[group].get('_target_')}): {exc}") from exc
    return built["optimizer"], built["scheduler"]


def _maybe_cache_features(cfg: DictConfig, model: Classifier, train_loader: Any, val_loader: Any,
                          device: torch.device, batch_mix: bool) -> tuple[torch.nn.Module, Any, Any]:
    """With ``trainer.cache_features``: the head and loaders of precomputed backbone features."""
    if not cfg.trainer.cache_features:
        return model, train_loader, val_loader
    views = cfg.trainer.feature_views
    reason = why_not_cacheable(model, cfg.augmentation.train is not None, batch_mix, views)
    if reason is None and cfg.trainer.ema_decay is not None:
        reason = "trainer.ema_decay is not supported with cached features yet (set trainer.ema_decay=null)"
    if reason:
        raise ConfigError(f"trainer.cache_features=true cannot apply: {reason}")
    train = _in_order(train_loader)
    options = {"progress": cfg.progress, "channels_last": cfg.trainer.channels_last}
    datasets = [extract_views(model, train, device, views, **options),
                extract(model, val_loader, device, desc="features val", **options)]
    log.info("cached backbone features of %d image(s) x %d cop%s: later epochs train only the head",
             len(datasets[0]), views, "y" if views == 1 else "ies (epoch e reads copy e mod views)")
    train_sampler = train_loader.batch_sampler
    loaders = [make_loader(datasets[0], batch_size=cfg.loader.batch_size, shuffle=True, seed=cfg.seed,
                           weights=train_sampler.weights),
               make_loader(datasets[1], batch_size=cfg.loader.batch_size, shuffle=False)]
    return model.net.head, loaders[0], loaders[1]


def _in_order(loader: Any) -> Any:
    """The same dataset in file order (features are cached per sample, not per shuffled batch)."""
    return make_loader(loader.dataset, batch_size=loader.batch_sampler.batch_size, shuffle=False)


def _ema(cfg: DictConfig, model: torch.nn.Module) -> Any:
    """An exponential moving average of the weights (``trainer.ema_decay``), or None."""
    if cfg.trainer.ema_decay is None:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.trainer.ema_decay), use_buffers=True)


def _batch_mix(cfg: DictConfig) -> Any:
    """MixUp/CutMix from the batch_mix group (None for ``batch_mix=none``)."""
    return instantiate(cfg.batch_mix) if cfg.batch_mix and "_target_" in cfg.batch_mix else None


def _precision_and_compile(cfg: DictConfig, model: Classifier, device: torch.device,
                           payload: dict[str, Any] | None) -> tuple[Any, torch.nn.Module]:
    """The fp16 gradient scaler (CUDA only) and the model the loop runs
    (compiled when asked; checkpoints always hold the plain module's weights)."""
    scaler = None
    if cfg.trainer.amp == "fp16" and device.type == "cuda":
        scaler = torch.amp.GradScaler("cuda")
        if payload is not None and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
    return scaler, (torch.compile(model) if cfg.trainer.compile else model)


def _prepare_data(cfg: DictConfig, exp: ExperimentDir, source: FolderSource, classes: list[str], *,
                  resuming: bool) -> tuple[Splits, dict[str, LoadedSplit]]:
    """Splits (reused when resuming), every split decoded once, checked, and the doctor's report."""
    splits, recorded = _splits(exp, source, classes, reuse=resuming)
    loaded = _load(cfg, source, splits, ("train", "val", "test"))
    _check_unchanged(recorded, loaded, refuse=True)
    exp.path.mkdir(parents=True, exist_ok=True)
    health = examine(splits, {n: s.report for n, s in loaded.items()}, root=str(source.root),
                     bad_files=source.bad_files)
    write_report(health, exp.path / "doctor.json")
    log.info("data:\n%s", format_report(health))
    warn_about_leaks(health)
    return splits, loaded


def _normalize(cfg: DictConfig, source: FolderSource, loaded: dict[str, LoadedSplit], model: Classifier) -> None:
    """``normalize: auto``: measure the train split once (remembered per file list) and use it."""
    if source.normalize != "auto":
        return
    train = loaded["train"]
    paths = [p for p, _ in train.samples]
    images = train.images.numpy() if train.images is not None else None
    mean, std = _cache(cfg).memo(paths, f"stats-{source.image_size}px",
                           lambda: channel_stats(images, train.rows, paths, source.image_size))
    source.mean, source.std = tuple(mean), tuple(std)
    cfg.dataset.mean, cfg.dataset.std = list(mean), list(std)  # the saved config shows what was used
    model.set_normalization(mean, std)
    log.info("normalize=auto: train mean %s, std %s", mean, std)


def _balance(cfg: DictConfig, train: LoadedSplit, num_classes: int, loss_fn: torch.nn.Module,
             device: torch.device) -> tuple[torch.nn.Module, list[float] | None]:
    """``imbalance``: class-weighted loss, or sample weights for a class-balanced sampler."""
    labels = [label for _, label in train.samples]
    weights = class_weights(labels, num_classes)
    if cfg.imbalance == "weighted_loss":
        log.info("class weights for the loss: %s", [round(w, 3) for w in weights])
        return instantiate(cfg.loss, weight=torch.tensor(weights, dtype=torch.float32)).to(device), None
    if cfg.imbalance == "weighted_sampler":
        return loss_fn, [weights[label] for label in labels]
    return loss_fn, None


def _report_finished(cfg: DictConfig, exp: ExperimentDir, payload: dict[str, Any]) -> float | None:
    state = payload["state"]
    log.warning(
        "experiment '%s' already finished %d epochs (best %s = %s at epoch %d) in %s; nothing to do.\n"
        "  evaluate it:    python test.py -cn=%s\n"
        "  train it again: overwrite=true (deletes it) or experiment=<new name>; train longer: epochs=<more>",
        cfg.experiment, state["epoch"], cfg.monitor, state["best"], state["best_epoch"], exp.path,
        _config_name())
    return state["best"]


def _restore(cfg: DictConfig, payload: dict[str, Any], classes: list[str], model: torch.nn.Module,
             optimizer: Any, schedule: Any, ema: Any = None) -> TrainState:
    check_resumable(payload, OmegaConf.to_container(cfg, resolve=True), classes)  # type: ignore[arg-type]
    model.load_state_dict(payload.get("train_model") or payload["model"])
    if ema is not None and payload.get("train_model"):
        ema.module.load_state_dict(payload["model"])
        ema.n_averaged.fill_(payload["ema_steps"])
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["scheduler"])
    state = TrainState(**payload["state"])
    log.info("resuming %s from epoch %d (batch %d)", cfg.experiment, state.epoch, state.step)
    return state


def _splits(exp: ExperimentDir, source: FolderSource, classes: list[str], *,
            reuse: bool) -> tuple[Splits, dict[str, str]]:
    """The experiment's saved splits (and recorded file hashes) when reusing them, else a fresh
    scan mapped onto ``classes``."""
    if reuse and exp.splits.exists():
        return read_splits(exp.splits, classes)
    return remap(source.scan(), classes), {}


def _split_to_test(split: str, splits: Splits, source: FolderSource) -> str:
    """The split test.py evaluates; ``all`` is added to ``splits`` as the union of every split."""
    if split == "all":
        splits.samples["all"] = [s for name in ("train", "val", "test") for s in splits.samples.get(name) or []]
    if splits.samples.get(split):
        return split
    if split == "test" and splits.samples.get("val"):
        log.warning("%s has no test split (no test/ folder and dataset.test_fraction=0): evaluating the "
                    "val split instead, which also chose the best checkpoint, so expect optimistic numbers. "
                    "Set dataset.test_fraction to carve a test split from train.", source.root)
        return "val"
    raise DataError(f"split '{split}' of {source.root} has no images; choose split=val, split=train or split=all")


def _cache(cfg: DictConfig, mode: str | None = None) -> DecodeCache:
    """The decoded-image cache the config describes (``mode`` overrides ``loader.cache``)."""
    return DecodeCache(cfg.paths.cache, mode=mode or cfg.loader.cache, progress=cfg.progress)


def _load(cfg: DictConfig, source: FolderSource, splits: Splits, names: tuple[str, ...],
          image_size: int | None = None) -> dict[str, LoadedSplit]:
    return load_splits(splits, _cache(cfg), image_size or source.image_size, names=names, bad_files=source.bad_files)


def _check_unchanged(recorded: dict[str, str], loaded: dict[str, LoadedSplit], *, refuse: bool) -> None:
    changed = changed_files(recorded, digests_by_path(loaded))
    if not changed:
        return
    message = f"{len(changed)} file(s) changed since this experiment's splits.csv was written, e.g. {changed[0]}"
    if refuse:
        raise DataError(message + "; resuming would train on different data: use experiment=<new name> or "
                        "overwrite=true")
    log.warning("%s; results are not comparable with earlier ones", message)


def _transform(node: Any) -> Any:
    return instantiate(node) if node is not None else None


def _serve(cfg: DictConfig, split: LoadedSplit, image_size: int, node: Any) -> Any:
    return split.dataset(image_size, _transform(node), batched=cfg.loader.batch_augment)


def _train_loaders(cfg: DictConfig, source: FolderSource, loaded: dict[str, LoadedSplit], device: torch.device,
                   sample_weights: list[float] | None = None) -> tuple[Any, Any]:
    if not loaded["val"].samples:
        raise DataError(f"no validation images: {source.root} has no val/ folder and dataset.val_fraction is 0")
    pin = device.type == "cuda" if cfg.loader.pin_memory == "auto" else bool(cfg.loader.pin_memory)
    loaders = []
    for split, transform in (("train", cfg.augmentation.train), ("val", cfg.augmentation.eval)):
        dataset = _serve(cfg, loaded[split], source.image_size, transform)
        if split == "train" and transform is not None and dataset.batch_op is None:
            log.info("augmentation runs image by image: %s", dataset.why_per_image)
        loaders.append(make_loader(dataset, batch_size=cfg.loader.batch_size, shuffle=split == "train",
                                   seed=cfg.seed, num_workers=cfg.loader.num_workers, pin_memory=pin,
                                   timeout=cfg.loader.timeout,
                                   weights=sample_weights if split == "train" else None))
    return loaders[0], loaders[1]


def _checkpoint_meta(cfg: DictConfig, source: FolderSource, classes: list[str], model: Classifier) -> dict[str, Any]:
    return {"experiment": cfg.experiment, "class_names": classes, "display_names": source.display_names(),
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "image_size": source.image_size,
            "mean": list(source.mean), "std": list(source.std), "monitor": cfg.monitor, "mode": cfg.mode,
            "epochs": cfg.epochs, "config": OmegaConf.to_container(cfg, resolve=True)}


def _load_weights(model: torch.nn.Module, payload: dict[str, Any], path: Path) -> None:
    """load_state_dict with the mismatch explained in terms of classes and layers (never strict=False)."""
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path} does not fit model {type(model.net).__name__} built from this config "
            f"(checkpoint: {len(payload['class_names'])} classes {payload['class_names']}, "
            f"model: {payload['config']['model'].get('_target_')}): {str(exc).splitlines()[0]} "
            "Use the config the checkpoint was trained with."
        ) from exc
