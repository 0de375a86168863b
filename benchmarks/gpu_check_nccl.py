"""The nccl step of benchmarks/gpu_check.py: imgclf's collectives and its DistributedDataParallel loop on NCCL.

``torchrun --nproc_per_node=1`` sets WORLD_SIZE=1, for which imgclf starts no process group at all
(``training.distributed.setup``), and one GPU cannot hold two NCCL ranks. So this step makes a group of one rank on
NCCL itself and hands imgclf a :class:`Distributed` that counts as active: every collective imgclf makes with
several ranks (the per-step agreement, sums on the device, the validation outputs gathered as objects, a checkpoint
broadcast, barriers) then runs through NCCL, with DistributedDataParallel and SyncBatchNorm around the model. A
collective that puts a tensor on the wrong device, or an object gather NCCL cannot do, fails here as it would on
eight GPUs. On the CPU (``--step nccl --device cpu``, the test suite) the same runs on gloo.
"""

from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist
from gpu_check_steps import Result, Setup, StepFailed, free_port
from torch import nn

from imgclf.models.classifier import Classifier
from imgclf.models.small_cnn import SmallCNN
from imgclf.tasks.ranks import wrapped
from imgclf.training.distributed import Distributed
from imgclf.training.engine import TrainOptions, train_one_epoch
from imgclf.training.validation import validate


class OneRank(Distributed):
    """Rank 0 of a group of one that imgclf treats as a group: its collectives run instead of being skipped."""

    @property
    def active(self) -> bool:
        return True


def nccl(setup: Setup) -> Result:
    device = torch.device(setup.device if ":" in setup.device or not setup.cuda else "cuda:0")
    backend = "nccl" if setup.cuda else "gloo"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    if setup.cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        found = one_rank_epoch(setup, device)
        version = " " + ".".join(map(str, torch.cuda.nccl.version())) if setup.cuda else ""
    finally:
        dist.destroy_process_group()
    name = torch.cuda.get_device_name(device) if setup.cuda else "CPU"
    found.details.insert(0, f"{backend}{version} on {name}")
    return found


def one_rank_epoch(setup: Setup, device: torch.device) -> Result:
    group = OneRank(rank=0, local_rank=0, world_size=1)
    torch.manual_seed(0)
    model = Classifier(SmallCNN(num_classes=10, width=16), [0.5] * 3, [0.25] * 3).to(device)
    trained = wrapped(model, group, device, sync_bn=setup.cuda)  # SyncBatchNorm runs only on GPUs
    if not isinstance(trained, nn.parallel.DistributedDataParallel):
        raise StepFailed(f"imgclf did not wrap the model for the group: {type(trained).__name__}")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (256, 3, 16, 16), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (256,), generator=g)
    batches = list(zip(images.split(64), labels.split(64), strict=True))
    loss_fn, optimizer = nn.CrossEntropyLoss(), torch.optim.AdamW(model.parameters(), lr=1e-3)
    amp = "bf16" if setup.cuda else "none"
    options = TrainOptions(amp=amp, channels_last=setup.cuda)
    metrics = train_one_epoch(trained, batches, loss_fn, optimizer, device=device, options=options, group=group)
    val, outputs = validate(trained, batches, loss_fn, device=device, num_classes=10, amp=amp, group=group)
    sent = {"state": {k: v.cpu() for k, v in model.state_dict().items()}, "epoch": 1}
    received = group.broadcast_checkpoint(sent)
    group.barrier()
    if not all(math.isfinite(metrics[k]) for k in ("train/loss", "train/acc")) or len(outputs.labels) != 256:
        raise StepFailed(f"one epoch through the group: metrics {metrics}, {len(outputs.labels)} outputs of 256")
    if received is None or received["epoch"] != 1 or set(received["state"]) != set(sent["state"]):
        raise StepFailed("the checkpoint broadcast through the group came back different")
    return Result(
        val["val/acc"],
        metrics["train/images_per_s"],
        [
            f"imgclf's DDP loop on a group of 1{' with SyncBatchNorm' if setup.cuda else ''}: agree, sum, gather, "
            "broadcast_checkpoint, barrier",
            "accuracy on its own train batches",
        ],
    )
