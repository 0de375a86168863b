"""What a model gave over a split, the record that evaluation hands to the report, the run log and calibration.

It lives here, below training/ and experiment/, so that neither imports the other for it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imgclf.reporting.metrics import confusion_matrix


@dataclass
class Outputs:
    """A model's outputs over a whole split, in loader order, on the CPU."""

    loss: float  # mean loss
    logits: torch.Tensor  # (N, C) float32
    labels: torch.Tensor  # (N,) class indices

    def confusion(self, num_classes: int) -> torch.Tensor:
        """Rows true classes, columns predictions."""
        return confusion_matrix(self.logits.argmax(1), self.labels, num_classes)
