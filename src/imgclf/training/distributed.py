"""One experiment on several processes: torch.distributed, started by torchrun (or by submitit on SLURM).

Every rank builds the same model from the same seed and trains on its own slice of each global batch (see
:class:`~imgclf.data.dataset.EpochBatchSampler`); DistributedDataParallel averages the gradients. Rank 0
alone writes the experiment folder. What must be the same on every rank is agreed once per step in one small
all-reduce (:meth:`Distributed.agree`): the global batch size, whether any rank's loss was not finite (then
every rank skips the step), and whether any rank was asked to stop (then every rank stops after the step).

Without torchrun's variables (``WORLD_SIZE`` unset or 1) :data:`SINGLE` stands in: nothing is initialised
and every collective is the identity, so one process trains exactly as before.
"""

from __future__ import annotations

import datetime
import io
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from imgclf.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the group. ``world_size`` 1: a single process (no process group)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one writer of the experiment folder."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (pickled: for plain values such as a flag or bytes)."""
        if not self.active:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_checkpoint(self, payload: dict[str, Any] | None) -> dict[str, Any] | None:
        """Rank 0's checkpoint payload on every rank, sent as torch.save bytes and read with ``weights_only``
        (like a file: nothing in it is executed)."""
        if not self.active:
            return payload
        data = None
        if self.is_main and payload is not None:
            buffer = io.BytesIO()
            torch.save(payload, buffer)
            data = buffer.getvalue()
        data = self.broadcast(data)
        return None if data is None else torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def agree(self, samples: int, finite: bool, stop: bool, device: torch.device) -> tuple[int, bool, bool]:
        """One all-reduce per step: (samples in the global batch, every loss finite, any rank stopping)."""
        if not self.active:
            return samples, finite, stop
        flags = torch.tensor([samples, int(not finite), int(stop)], dtype=torch.int64, device=device)
        dist.all_reduce(flags)
        total, bad, stopping = flags.tolist()
        return int(total), bad == 0, stopping > 0

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (a new tensor; the input is left as it was)."""
        if not self.active:
            return values
        values = values.clone()
        dist.all_reduce(values)
        return values

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.active:
            return [value]
        found: list[Any] = [None] * self.world_size
        dist.all_gather_object(found, value)
        return found

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Local rank 0 runs the block first (e.g. builds the decoded-image cache of this machine), the other
        ranks afterwards (reading what it built)."""
        if self.local_rank != 0:
            self.barrier()
        yield
        if self.local_rank == 0:
            self.barrier()


SINGLE = Distributed()


def launched_rank() -> int:
    """This process's rank as its launcher set it (torchrun, or submitit's tasks), 0 without one: readable
    before the process group exists, e.g. while Hydra decides what this process writes."""
    for name in ("RANK", "SUBMITIT_LOCAL_GLOBALID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    if "SUBMITIT_EXECUTOR" in os.environ and os.environ.get("SLURM_PROCID", "").isdigit():
        return int(os.environ["SLURM_PROCID"])
    return 0


def from_environment() -> tuple[int, int, int] | None:
    """(rank, local rank, world size) set by torchrun, or by submitit for a job of several tasks; else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world
    if "SUBMITIT_EXECUTOR" in os.environ:  # hydra/launcher=slurm (or submitit_local) with tasks_per_node > 1
        import submitit  # only here: submitit belongs to the launcher, training does not need it

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            digits = "".join(c for c in str(env.job_id) if c.isdigit()) or "0"
            # every task of the job derives the same rendezvous: the job's first node, a port from the job id
            first = "127.0.0.1" if env.cluster == "local" or not env.hostnames else env.hostnames[0]
            os.environ.setdefault("MASTER_ADDR", first)
            os.environ.setdefault("MASTER_PORT", str(20000 + int(digits) % 20000))
            os.environ.update(RANK=str(env.global_rank), LOCAL_RANK=str(env.local_rank), WORLD_SIZE=str(env.num_tasks))
            return env.global_rank, env.local_rank, env.num_tasks
    return None


def setup(device_name: str, timeout_s: float) -> tuple[Distributed, str]:
    """Join the process group when launched on several processes; returns it and the device to use.

    NCCL on CUDA (``device=auto`` or ``cuda`` becomes ``cuda:<local rank>``), gloo on the CPU. A rank that does
    not answer a collective within ``timeout_s`` seconds ends the run (a rank that died).
    """
    found = from_environment()
    if found is None:
        return SINGLE, device_name
    rank, local_rank, world = found
    cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if device_name.startswith("cuda:"):
        raise ConfigError(
            f"device={device_name} under torchrun: every rank would use that one GPU; use device=auto "
            "(rank r of a machine takes cuda:<local rank>) or device=cuda"
        )
    if device_name == "cuda" and not cuda:
        raise ConfigError("device=cuda but torch sees no CUDA GPU; use device=auto or device=cpu")
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                "start torchrun with --nproc_per_node at most that"
            )
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as exc:
            raise TrainingError(
                f"rank {rank} of {world} could not join the process group ({backend}, "
                f"MASTER_ADDR={os.environ.get('MASTER_ADDR')}, MASTER_PORT={os.environ.get('MASTER_PORT')}): "
                f"{exc}"
            ) from None
    group = Distributed(rank, local_rank, world)
    log.info("rank %d of %d (local rank %d), %s", rank, world, local_rank, backend)
    return group, f"cuda:{local_rank}" if cuda else "cpu"


def teardown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
