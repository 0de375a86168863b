"""The largest batch that trains in a GPU's memory, found by trying: ``loader.batch_size=auto``.

Like Lightning's BatchSizeFinder (``mode=binsearch``) and Ultralytics' AutoBatch, but every try is a real training
step: the run's model, optimizer, loss, mixed precision, channels-last layout and gradient accumulation, on a
synthetic batch of the run's input size and class count. Memory is not predicted from a formula, because what a
network keeps for its backward pass depends on its layers, cuDNN's chosen kernels and the allocator.

The batch grows by doubling from ``start`` until a try runs out of memory, then a bisection between the last batch
that trained and the first that did not finds the largest that trains. The run then uses ``headroom`` (90%) of it,
rounded down to a multiple of 8 (:func:`with_headroom`): a real epoch meets a fragmented allocator, an EMA update,
the validation pass and the loader's pinned batches, which one trial step does not.

Nothing here reads a config: :mod:`imgclf.tasks.batch_size` does, and decides the learning rate and the ranks.
"""

from __future__ import annotations

import gc
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from imgclf.training.device import autocast
from imgclf.training.engine import Batch, StepExtras, loop_inputs

# what a failed allocation says when it is not raised as torch.OutOfMemoryError: the caching allocator of older torch
# ("CUDA out of memory"), a kernel launch ("CUDA error: out of memory"), cuBLAS and cuDNN asking for their workspaces,
# and cuDNN refusing a batch too large for its kernels (pytorch/pytorch#4107; Lightning counts it as out of memory)
OUT_OF_MEMORY = (
    "CUDA out of memory",
    "CUDA error: out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_NOT_SUPPORTED",
)
HEADROOM = 0.9  # the share of the largest batch that trained which the run uses
MULTIPLE = 8  # batches are rounded down to a multiple of this (tensor cores and cuDNN prefer them)
MINIMUM = 2  # the smallest batch tried: BatchNorm cannot train on one image (the sampler drops such batches too)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says that the device ran out of memory (so a smaller batch may still train)."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and any(text in str(exc) for text in OUT_OF_MEMORY)
    )


def with_headroom(largest: int, headroom: float = HEADROOM, multiple: int = MULTIPLE, minimum: int = MINIMUM) -> int:
    """The batch a run uses when ``largest`` trained: ``headroom`` of it, rounded down to a multiple of ``multiple``
    (when at least that), never below ``minimum``; 0 when not even ``minimum`` trained.

    >>> with_headroom(432)  # 388.8 -> 388 -> 384
    384
    """
    if largest < minimum:
        return 0
    kept = math.floor(largest * headroom + 1e-9)  # 1e-9: 0.9 * 10 is 9.000000000000002 but 0.9 * 30 is 27.0
    if kept >= multiple:
        kept -= kept % multiple
    return max(minimum, kept)


def search_limit(cap: int, headroom: float = HEADROOM, multiple: int = MULTIPLE, minimum: int = MINIMUM) -> int:
    """The largest batch worth trying under ``cap``: the smallest whose :func:`with_headroom` reaches ``cap``, so
    that a run capped at ``cap`` still keeps its headroom below the memory limit."""
    n = max(cap, math.ceil(cap / headroom))
    while with_headroom(n, headroom, multiple, minimum) < cap:
        n += 1
    return n


@dataclass(frozen=True)
class Search:
    """What the tries found.

    Attributes:
        largest: the largest batch that trained (0: not even the smallest tried).
        failed: the smallest batch that ran out of memory (None: every batch tried up to the limit trained).
        tries: every batch tried, in order, and whether it trained.
        seconds: the search's wall time.
    """

    largest: int
    failed: int | None
    tries: tuple[tuple[int, bool], ...]
    seconds: float


def find_largest(
    step: Callable[[int], None],
    *,
    limit: int,
    start: int = MINIMUM,
    minimum: int = MINIMUM,
    free: Callable[[], None] = lambda: None,
) -> Search:
    """The largest batch up to ``limit`` for which ``step(batch)`` returns without running out of memory.

    Doubles from ``start`` until a try fails (or ``limit`` trains), then bisects between the last batch that
    trained and the first that failed, so the answer is exact: about log2(limit) tries each way. ``free`` runs after
    every try that ran out of memory (:func:`free_memory`). An error other than out of memory is raised as it is.
    """
    began = time.perf_counter()
    tries: list[tuple[int, bool]] = []

    def fits(batch: int) -> bool:
        trained = _trains(step, batch)
        tries.append((batch, trained))
        if not trained:  # a try that trained freed its tensors as it returned (the allocator reuses its blocks)
            free()
        return trained

    good, bad = 0, None
    batch = max(minimum, min(start, limit))
    while bad is None and good < limit:  # grow
        if fits(batch):
            good, batch = batch, min(batch * 2, limit)
        else:
            bad = batch
    low = good or minimum - 1
    while bad is not None and bad - low > 1:  # narrow: `low` trained (or is below the smallest), `bad` did not
        middle = (low + bad) // 2
        if fits(middle):
            low = good = middle
        else:
            bad = middle
    return Search(good, bad, tuple(tries), time.perf_counter() - began)


def _trains(step: Callable[[int], None], batch: int) -> bool:
    try:
        step(batch)
    except RuntimeError as exc:  # torch.OutOfMemoryError is one
        if not is_out_of_memory(exc):
            raise
        return False  # leaving the except block drops the exception and the frames (and tensors) it holds
    return True


def free_memory(device: torch.device) -> None:
    """Give the memory of a failed try back: what reference cycles through the exception's frames still hold (a full
    collection: about a second in a large process, so only after failures), then CUDA's cached blocks, so the next
    try starts from what the run itself holds."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def synthetic_batch(batch: int, image_size: int, num_classes: int, device: torch.device) -> Batch:
    """Random uint8 images and labels of the run's shape, made on the device (no host copy to wait for)."""
    images = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8, device=device)
    return images, torch.randint(0, num_classes, (batch,), device=device)


def trial_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    *,
    image_size: int,
    num_classes: int,
    device: torch.device,
    amp: str = "none",
    channels_last: bool = False,
    accumulate: int = 1,
    clip_grad_norm: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
    batch_mix: Callable[[torch.Tensor, torch.Tensor], Batch] | None = None,
    steps: int = 2,
) -> Callable[[int], None]:
    """``step(batch)``: ``steps`` optimizer steps of ``model`` on synthetic batches of ``batch`` images, as the
    training loop takes them (``engine.loop_inputs``, autocast, the scaled loss, clipping, the optimizer).

    Two steps, because the first allocates the optimizer's state (Adam's moments) after its backward pass: only
    the second holds the weights, gradients, optimizer state and activations at once, as every later step of a
    run does. With ``accumulate`` > 1 each step adds two micro-batches' gradients, as accumulation does. The fp16
    scaler scales the loss but the optimizer always steps (a skipped step would allocate no state), so the weights
    may turn to NaN: :func:`unchanged` puts them back.
    """
    extras = StepExtras(batch_mix=batch_mix)

    def step(batch: int) -> None:
        model.train()
        try:
            for _ in range(steps):
                for _ in range(min(accumulate, 2)):
                    images, labels = loop_inputs(
                        *synthetic_batch(batch, image_size, num_classes, device), device, channels_last, extras
                    )
                    with autocast(device, amp):
                        loss = loss_fn(model(images), labels) / accumulate
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                    del images, labels, loss  # the next micro-batch's activations replace these, not join them
                if clip_grad_norm is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # an error of the kernels queued above is raised here, inside the try
        finally:
            optimizer.zero_grad(set_to_none=True)  # a failed try leaves no gradient behind

    return step


@contextmanager
def unchanged(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
) -> Iterator[None]:
    """Whatever runs inside leaves the weights (and buffers), which of them train, the optimizer's state and learning
    rates, the gradient scaler, the train/eval mode and the random streams (CPU and ``device``) as they were. The
    copies wait on the CPU, so the tries have the whole device."""
    weights = _on_cpu(model.state_dict())
    optimizer_state = _on_cpu(optimizer.state_dict())
    scaler_state = scaler.state_dict() if scaler is not None else None
    training = model.training
    trains = [p.requires_grad for p in model.parameters()]  # a frozen backbone may be unfrozen for the tries
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            optimizer.zero_grad(set_to_none=True)
            model.load_state_dict(weights)  # copied into the live tensors: the optimizer still holds the same ones
            optimizer.load_state_dict(optimizer_state)  # replaces the state the tries allocated
            if scaler is not None:
                scaler.load_state_dict(scaler_state)
            model.train(training)
            for parameter, flag in zip(model.parameters(), trains, strict=True):
                parameter.requires_grad_(flag)


def _on_cpu(value: Any) -> Any:
    """A deep copy with every tensor on the CPU (a state_dict holds the live tensors, not copies)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        copied = OrderedDict((key, _on_cpu(item)) for key, item in value.items())
        if hasattr(value, "_metadata"):  # a module's state_dict: the layers' versions, read when loading it back
            copied._metadata = value._metadata  # type: ignore[attr-defined]
        return copied
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(item) for item in value)
    return value
