"""One builder per config group: the objects a run is made of, instantiated from ``cfg``.

Only the composition root (this package) reads the config; every object below it takes plain,
typed arguments. A builder that fails names the group and its ``_target_``, so a bad override is a
one-line error before any data is read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from imgclf.data.cache import DecodeCache
from imgclf.data.folder import FolderSource
from imgclf.errors import ConfigError, ImgclfError
from imgclf.models.classifier import Classifier
from imgclf.tasks import preprocess
from imgclf.tasks.folders import project_root
from imgclf.training.engine import StepExtras, TrainOptions
from imgclf.training.onnx_twin import faster_backbone
from imgclf.training.scheduler import Scheduler

log = logging.getLogger(__name__)

PATH_KEYS = ("root", "home", "exclude", "relabel")  # dataset keys that name folders or files


@contextmanager
def building(cfg: DictConfig, group: str) -> Iterator[None]:
    """Turn any failure while building from a config group into a ConfigError naming the group and its
    ``_target_`` (imgclf's own errors pass as they are: they name what to fix already)."""
    try:
        yield
    except ImgclfError:
        raise
    except Exception as exc:
        if isinstance(exc.__cause__, ImgclfError):  # Hydra's instantiate wraps the class's own message
            raise exc.__cause__ from None
        raise ConfigError(f"could not build `{group}` ({cfg[group].get('_target_')}): {exc}") from exc


def source(cfg: DictConfig) -> FolderSource:
    """The ``dataset`` group's data source; a relative ``dataset.root`` (or ``exclude`` / ``relabel`` list) resolves
    against the project root and the absolute path is written back, so the saved config shows the files used."""
    for key in PATH_KEYS:
        if cfg.dataset.get(key) is not None:
            path = Path(cfg.dataset[key]).expanduser()
            cfg.dataset[key] = str(path if path.is_absolute() else (project_root(cfg) / path).resolve())
    node = {k: v for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items() if k not in preprocess.KEYS}
    with building(cfg, "dataset"):
        return instantiate(node)


def native_size(cfg: DictConfig) -> int | None:
    """The input size the ``model`` group's pretrained weights were trained at (None: from scratch)."""
    with building(cfg, "model"):
        model_class = get_class(cfg.model._target_)
        arguments = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if not k.startswith("_")}
        return preprocess.native_size(model_class, arguments)


def image_size(cfg: DictConfig, native: int | None, sizes: Sequence[Any]) -> preprocess.SizeChoice:
    """``dataset.image_size`` (a number or ``auto``) for train images of ``sizes`` and a model of ``native`` size."""
    try:
        return preprocess.image_size(
            cfg.dataset.image_size,
            sizes,
            native=native,
            max_size=cfg.dataset.get("max_image_size", 224),
            resize=cfg.dataset.get("resize", "squash"),
            crop_fraction=cfg.dataset.get("crop_fraction", 0.875),
            native_scale=cfg.dataset.get("native_scale", 1.0),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def network(cfg: DictConfig) -> nn.Module:
    """The ``model`` group's network (on the CPU; :func:`placed` checks it and moves it)."""
    with building(cfg, "model"):
        return instantiate(cfg.model)


def placed(cfg: DictConfig, net: nn.Module, image_size: int, device: torch.device) -> nn.Module:
    """``net``, checked on two blank images to give (2, num_classes) logits, on ``device`` in the memory
    layout ``trainer.channels_last`` asks for."""
    try:
        net.eval()
        with torch.no_grad():
            out = net(torch.zeros(2, 3, image_size, image_size))
    except Exception as exc:
        raise ConfigError(
            f"could not build `model` ({cfg.model.get('_target_')}) for {image_size}px images: {exc}"
        ) from exc
    if tuple(out.shape) != (2, cfg.dataset.num_classes):
        raise ConfigError(
            f"model {cfg.model._target_} gives logits of shape {tuple(out.shape)}, "
            f"expected (batch, {cfg.dataset.num_classes})"
        )
    layout = torch.channels_last if cfg.trainer.channels_last else torch.preserve_format
    return net.to(device, memory_format=layout)


def optimizer_and_scheduler(cfg: DictConfig, net: nn.Module) -> tuple[torch.optim.Optimizer, Scheduler]:
    """The ``optimizer`` over the network's parameters (its own groups when it has them: a backbone at its
    own learning rate), and the ``scheduler`` over the optimizer."""
    built: dict[str, Any] = {}
    for group in ("optimizer", "scheduler"):
        try:
            factory = instantiate(cfg[group])
            if group == "optimizer":
                params = net.param_groups(cfg.optimizer.lr) if hasattr(net, "param_groups") else net.parameters()
                built[group] = factory(params)
            else:
                built[group] = factory(built["optimizer"])
        except Exception as exc:
            raise ConfigError(f"could not build `{group}` ({cfg[group].get('_target_')}): {exc}") from exc
    return built["optimizer"], built["scheduler"]


def loss(cfg: DictConfig, device: torch.device, class_weights: list[float] | None = None) -> nn.Module:
    """The ``loss`` group's loss function, weighted by class when ``class_weights`` are given."""
    if class_weights is None:
        return instantiate(cfg.loss).to(device)
    return instantiate(cfg.loss, weight=torch.tensor(class_weights, dtype=torch.float32)).to(device)


def step_extras(cfg: DictConfig, model: nn.Module, device: torch.device, payload: dict[str, Any] | None) -> StepExtras:
    """The fp16 gradient scaler (CUDA only; restored when resuming), ``batch_mix`` and the EMA of the weights."""
    scaler = None
    if cfg.trainer.amp == "fp16" and device.type == "cuda":
        scaler = torch.amp.GradScaler("cuda")
        if payload is not None and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
    return StepExtras(scaler=scaler, batch_mix=batch_mix(cfg), ema=ema(cfg, model))


def ema(cfg: DictConfig, model: nn.Module) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of the weights (``trainer.ema_decay``), or None."""
    if cfg.trainer.ema_decay is None:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.trainer.ema_decay), use_buffers=True)


def batch_mix(cfg: DictConfig) -> Any:
    """MixUp/CutMix from the ``batch_mix`` group (None for ``batch_mix=none``). An ``alpha`` written as a whole
    number (``batch_mix.alpha=1``) is made a float: torchvision keeps its type and torch's Dirichlet sampler has no
    integer version."""
    if not cfg.batch_mix or "_target_" not in cfg.batch_mix:
        return None
    with building(cfg, "batch_mix"):
        return instantiate(_float_alphas(OmegaConf.to_container(cfg.batch_mix, resolve=True)))


def _float_alphas(node: Any, key: str = "batch_mix") -> Any:
    """``node`` with every ``alpha`` a float, refused unless above 0 (a Beta distribution's parameter)."""
    if isinstance(node, list):
        return [_float_alphas(v, f"{key}.{i}") for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    found = {k: _float_alphas(v, f"{key}.{k}") for k, v in node.items()}
    alpha = found.get("alpha")
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ConfigError(
                f"{key}.alpha={alpha!r}: MixUp and CutMix need a number above 0 (torchvision's recipes use 0.2 for "
                "MixUp and 1.0 for CutMix)"
            )
        found["alpha"] = float(alpha)
    return found


def train_options(cfg: DictConfig) -> TrainOptions:
    """The loop's settings from ``cfg.trainer`` and the run's top-level keys."""
    trainer = cfg.trainer
    return TrainOptions(
        epochs=cfg.epochs,
        monitor=cfg.monitor,
        mode=cfg.mode,
        accumulate=trainer.accumulate,
        clip_grad_norm=trainer.clip_grad_norm,
        amp=trainer.amp,
        channels_last=trainer.channels_last,
        max_nonfinite=trainer.max_nonfinite,
        patience=trainer.early_stopping.patience,
        min_delta=trainer.early_stopping.min_delta,
        progress=cfg.progress,
    )


def transform(node: Any) -> Any:
    """A transform of the ``augmentation`` group (``train`` or ``eval``), or None."""
    return instantiate(node) if node is not None else None


def frozen_passes(cfg: DictConfig, model: Classifier, device: torch.device) -> AbstractContextManager[None]:
    """A block whose frozen-backbone passes run on ``trainer.frozen_engine``; the exported backbone is kept under
    ``paths.cache`` (with ``loader.cache=disk``, as the decoded images are) for later runs and test.py."""
    folder = Path(cfg.paths.cache).expanduser() / "onnx" if cfg.loader.cache == "disk" else None
    return faster_backbone(model.net, cfg.trainer.frozen_engine, device, folder)


def cache(cfg: DictConfig, mode: str | None = None) -> DecodeCache:
    """The decoded-image cache the config describes (``mode`` overrides ``loader.cache``). ``paths.cache`` is
    used only with ``loader.cache=disk``: with memory or none it is never created, read or written (J11)."""
    folder = cfg.paths.cache if cfg.loader.cache == "disk" else None
    return DecodeCache(folder, mode=mode or cfg.loader.cache, progress=cfg.progress)
