"""The energy score of every image a model (bare or wrapped for test-time augmentation) classifies, recorded as it
runs: one forward pass gives both the outputs and the score.

A test-time-augmentation wrapper returns log-probabilities, whose logsumexp is 0 for every image: the score must be
read from the network's own logits, inside the wrapper. The tap does that with forward hooks: the outer model's
call opens a batch, every call of the :class:`Classifier` inside adds its views' scores, and a batch's score is the
mean over its views (an image and its mirror image with ``tta=flip``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from imgclf.models.classifier import Classifier


class EnergyTap:
    """Records ``T * logsumexp(logits / T)`` per image while ``model`` runs (a context manager).

    Args:
        model: a :class:`Classifier`, or a module holding one (``with_tta``'s wrappers).
        temperature: the calibrated temperature (the score scales with it, as the probabilities do).
    """

    def __init__(self, model: nn.Module, temperature: float = 1.0) -> None:
        inner = [m for m in model.modules() if isinstance(m, Classifier)]
        if not inner:
            raise TypeError(f"{type(model).__name__} holds no imgclf Classifier to read logits from")
        self.outer, self.inner, self.temperature = model, inner[0], float(temperature)
        self.batches: list[list[torch.Tensor]] = []
        self._handles: list[Any] = []

    def __enter__(self) -> EnergyTap:
        self._handles = [
            self.outer.register_forward_pre_hook(lambda *_: self.batches.append([])),
            self.inner.register_forward_hook(self._record),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _record(self, _module: nn.Module, _inputs: Any, logits: torch.Tensor) -> None:
        t = self.temperature
        score = t * torch.logsumexp(logits.detach().float() / t, dim=1)
        if not self.batches:  # the Classifier called on its own, outside the outer model
            self.batches.append([])
        self.batches[-1].append(score)

    def scores(self) -> torch.Tensor:
        """(N,) scores of every image since the tap opened (or since the last call), in order, on the CPU."""
        out = [torch.stack(views).mean(0).cpu() for views in self.batches if views]
        self.batches = []
        return torch.cat(out) if out else torch.zeros(0)
