"""A model's outputs over a whole split, and the validation metrics of an epoch."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from imgclf.progress import progress as progress_bar
from imgclf.reporting.metrics import SplitMetrics
from imgclf.reporting.outputs import Outputs
from imgclf.training.device import autocast, to_device
from imgclf.training.distributed import SINGLE, Distributed


@torch.no_grad()
def collect(
    model: nn.Module,
    loader: Iterable,
    loss_fn: nn.Module,
    *,
    device: torch.device,
    progress: bool = False,
    desc: str = "eval",
    amp: str = "none",
    channels_last: bool = False,
    metrics: SplitMetrics | None = None,
) -> Outputs:
    """Logits, labels and mean loss of ``model`` over ``loader`` (one transfer to the CPU at the end);
    ``metrics`` are updated batch by batch on the device."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    logits_list, labels_list = [], []
    for images, labels in progress_bar(loader, desc=desc, unit="batch", enabled=progress):
        images = to_device(images, device, channels_last)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
            loss_sum += loss_fn(logits, labels).float() * labels.shape[0]
        logits_list.append(logits.float())
        labels_list.append(labels)
        if metrics is not None:
            metrics.update(logits_list[-1], labels)
    if not logits_list:
        return Outputs(0.0, torch.zeros(0, 0), torch.zeros(0, dtype=torch.long))
    all_logits, all_labels = torch.cat(logits_list).cpu(), torch.cat(labels_list).cpu()
    return Outputs(float(loss_sum) / max(len(all_labels), 1), all_logits, all_labels)


def validate(
    model: nn.Module,
    loader: Iterable,
    loss_fn: nn.Module,
    *,
    device: torch.device,
    num_classes: int,
    prefix: str = "val",
    progress: bool = False,
    amp: str = "none",
    channels_last: bool = False,
    group: Distributed = SINGLE,
) -> tuple[dict[str, float], Outputs]:
    """``<prefix>/loss``, ``<prefix>/acc`` and ``<prefix>/f1`` (macro) over ``loader``, and the outputs.

    With several ranks, each validates its own share of the split and every rank gets every output (one
    gather per epoch), from which the metrics of the whole split are counted. (torchmetrics' own sync is not
    used: it would all-gather the float64 CPU copy the exact scores are computed from, which NCCL cannot.)"""
    split_metrics = SplitMetrics(num_classes, device)
    outputs = collect(
        model,
        loader,
        loss_fn,
        device=device,
        progress=progress,
        desc=prefix,
        amp=amp,
        channels_last=channels_last,
        metrics=None if group.active else split_metrics,
    )
    if group.active:
        outputs = joined(group.gather(outputs))
        split_metrics.update(outputs.logits.to(device), outputs.labels.to(device))
    summary = split_metrics.compute()  # the one host sync of the metrics (and, with ranks, their one all-reduce)
    metrics = {f"{prefix}/loss": outputs.loss, f"{prefix}/acc": summary["accuracy"], f"{prefix}/f1": summary["f1"]}
    return metrics, outputs


def joined(parts: list[Outputs]) -> Outputs:
    """The outputs of consecutive shares of one split, as one."""
    kept = [p for p in parts if len(p.labels)]
    if not kept:
        return parts[0]
    count = sum(len(p.labels) for p in kept)
    return Outputs(
        sum(p.loss * len(p.labels) for p in kept) / count,
        torch.cat([p.logits for p in kept]),
        torch.cat([p.labels for p in kept]),
    )
