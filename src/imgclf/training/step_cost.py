"""What one training step costs on this machine: seconds per optimizer step, measured, not guessed.

``trainer.budget`` with a network trained from scratch (the ``scratch`` recipe) spends its time in optimizer steps;
:func:`seconds_per_step` times a network's real step (forward, loss, backward, the optimizer's update, and the
batch augmentation the run would apply) on a random batch of the run's size, so a run can choose a network whose
epochs fit before it decodes a file. Every random generator is left as it was: the run's seeded draws (the
weights it initialises next) are those of a run that measured nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from imgclf.training.device import autocast
from imgclf.training.pass_cost import sync

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # uint8 (B, 3, H, W) -> uint8, as the run's
WARM_STEPS = 1  # untimed: the first step allocates the gradients and the optimizer's state
TIMED_STEPS = 2


def seconds_per_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    *,
    image_size: int,
    batch: int,
    num_classes: int,
    device: torch.device,
    channels_last: bool = False,
    augment: Augment | None = None,
    amp: str = "none",
) -> float:
    """The wall time of one optimizer step on a batch of ``batch`` random images of ``image_size`` px (the mean of
    :data:`TIMED_STEPS` after :data:`WARM_STEPS`), ``augment`` applied to the uint8 batch first as the loader would,
    the forward pass and loss under ``amp``'s mixed precision as the loop runs them.
    ``net`` is trained by it: time a copy that the run will not use."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, num_classes, (batch,), generator=generator).to(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(device, memory_format=layout).train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):

        def step() -> None:
            images = augment(pixels, generator) if augment is not None else pixels
            inputs = images.to(device).float().div_(255).contiguous(memory_format=layout)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, amp):
                loss = loss_fn(net(inputs), labels)
            loss.backward()
            optimizer.step()

        for _ in range(WARM_STEPS):
            step()
        sync(device)
        start = time.perf_counter()
        for _ in range(TIMED_STEPS):
            step()
        sync(device)
    return (time.perf_counter() - start) / TIMED_STEPS
