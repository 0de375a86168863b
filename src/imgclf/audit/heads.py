"""The fast path's per-fold model: the recipe's head trained on cached frozen-backbone features.

The backbone is frozen, so its features of an image never change: they are computed once for every image (and
its mirror image when the recipe tests with ``tta=flip``), and each fold trains only a fresh head on them, a few
seconds on a CPU. Epoch ``e`` reads view ``e mod views`` (as ``training.features.AugmentedFeatures`` does), and
an image's held-out probabilities are the mean over its views (as ``tta=flip`` predicts).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

# builds the optimizer and its Scheduler (imgclf.training.scheduler) for a module's parameters
Optimizers = Callable[[nn.Module], tuple[torch.optim.Optimizer, Any]]


def fresh_copy(head: nn.Module, seed: int) -> nn.Module:
    """A copy of ``head`` with newly drawn weights (seeded): every fold starts from its own initialisation."""
    copied = copy.deepcopy(head)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in copied.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    finally:
        torch.random.set_rng_state(generator_state)  # the caller's stream is left as it was
    return copied


def fit_head(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    optimizers: Optimizers,
    loss_fn: nn.Module,
    epochs: int,
    batch_size: int,
    seed: int,
) -> nn.Module:
    """Train ``head`` on ``features`` (views, images, dims) with ``labels`` (images,) for ``epochs``, in shuffled
    batches (seeded); the last epoch's weights are kept (no held-out data chooses an epoch)."""
    optimizer, scheduler = optimizers(head)
    generator = torch.Generator().manual_seed(seed)
    views = features.shape[0]
    head.train()
    for epoch in range(epochs):
        view = features[epoch % views]
        order = torch.randperm(len(labels), generator=generator).to(labels.device)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            if len(batch) < 2 and len(order) > 1:  # BatchNorm in a head cannot take a batch of one
                continue
            loss = loss_fn(head(view[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.after_step()
        scheduler.after_epoch(float(loss.detach()))
    return head


@torch.no_grad()
def predict_head(head: nn.Module, features: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """(images, classes) probabilities: the softmax of ``head`` averaged over the views of ``features``."""
    head.eval()
    probs = torch.zeros(features.shape[1], 0)
    for view in features:
        out = torch.cat(
            [head(view[i : i + batch_size]).float().softmax(1).cpu() for i in range(0, len(view), batch_size)]
        )
        probs = out if probs.shape[1] == 0 else probs + out
    return (probs / features.shape[0]).double().numpy()


def head_scorer(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    optimizers: Optimizers,
    loss_fn: nn.Module,
    epochs: int,
    batch_size: int,
    seed: int,
) -> Callable[[np.ndarray, np.ndarray, int], np.ndarray]:
    """A ``folds.TrainAndScore``: a fresh copy of ``head`` trained on the kept images' features, scoring the
    held-out ones."""

    def train_and_score(kept: np.ndarray, held_out: np.ndarray, fold: int) -> np.ndarray:
        kept_t = torch.as_tensor(kept, device=features.device)
        model = fit_head(
            fresh_copy(head, seed + fold),
            features[:, kept_t],
            labels[kept_t],
            optimizers=optimizers,
            loss_fn=loss_fn,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed + fold,
        )
        return predict_head(model, features[:, torch.as_tensor(held_out, device=features.device)])

    return train_and_score
