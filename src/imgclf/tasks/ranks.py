"""What a training run does differently on several processes: wrap the model, quiet the other ranks, seed
their augmentation apart, and give them writers that write nothing (rank 0 alone writes the experiment)."""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from imgclf.data.sampler import SEED_RANGE
from imgclf.errors import ConfigError
from imgclf.training.distributed import Distributed
from imgclf.training.state import TrainState

log = logging.getLogger(__name__)


class Silent:
    """Stands in for the checkpoint writer and the run log on ranks other than 0."""

    def save(self, state: TrainState, *, best: bool) -> None:
        pass

    def write(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def new_best(self, epoch: int, outputs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def quiet(group: Distributed) -> None:
    """Ranks other than 0 log warnings and errors only: one copy of the progress in the console and log."""
    if not group.is_main:
        logging.getLogger("imgclf").setLevel(logging.WARNING)


def wrapped(module: nn.Module, group: Distributed, device: torch.device, sync_bn: bool) -> nn.Module:
    """``module`` in DistributedDataParallel (with BatchNorm synchronised across ranks if asked); itself
    on one process. The wrapper shares the module's parameters, so checkpoints keep the plain weights."""
    if not group.active:
        return module
    if sync_bn:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)  # reuses the same parameters and buffers
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def check_sync_bn(sync_bn: bool, device: torch.device) -> None:
    """At start, before any data is read: torch's SyncBatchNorm runs only on GPUs."""
    if sync_bn and device.type != "cuda":
        raise ConfigError(
            "trainer.sync_bn=true needs CUDA GPUs: torch's SyncBatchNorm works only with GPU modules. "
            "On the CPU each rank keeps its own BatchNorm statistics: set trainer.sync_bn=false"
        )


def seed_apart(seed: int, group: Distributed, state: TrainState) -> None:
    """Give ranks other than 0 their own random streams (dropout, per-image augmentation), from (seed, rank,
    where the run starts), so that they do not draw the same numbers for different images."""
    if group.is_main:
        return
    mixed = ((seed * 1_000_003 + group.rank) * 1_000_003 + state.epoch * 100_003 + state.step) % SEED_RANGE
    random.seed(mixed)
    np.random.seed(mixed % 2**32)
    torch.manual_seed(mixed)


def check_world_size(payload: dict[str, Any] | None, group: Distributed) -> None:
    """A run resumed with another number of processes: at an epoch boundary it goes on (each global batch
    then has another size: say so); in the middle of an epoch the batches already trained on cannot be
    mapped, so it is refused."""
    if payload is None:
        return
    before = int(payload.get("world_size", 1))
    if before == group.world_size:
        return
    state = payload["state"]
    if state.get("step", 0):
        raise ConfigError(
            f"this run stopped in the middle of epoch {state['epoch'] + 1} with world size {before} (processes); "
            f"it cannot resume there with world size {group.world_size}: run it again with {before} process(es) "
            "to finish the epoch, or start over with overwrite=true"
        )
    log.warning(
        "resuming with world size %d (saved with %d): each global batch now holds loader.batch_size x %d "
        "images; the learning rate is not changed",
        group.world_size,
        before,
        group.world_size,
    )
