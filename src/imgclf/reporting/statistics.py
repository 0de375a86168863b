"""What a test report computes beyond torchmetrics (``imgclf.reporting.metrics``): the
reliability-diagram bins, temperature scaling, bootstrap confidence intervals and the worst mistakes.

Every function takes CPU tensors: ``logits`` (N, C) and ``labels`` (N,) class indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imgclf.reporting.metrics import calibration_error


@dataclass
class Reliability:
    """Calibration of the top-1 confidence, in equal-width confidence bins."""

    edges: list[float]  # bins + 1 edges from 0 to 1
    counts: list[int]  # samples per bin
    confidence: list[float]  # mean top-1 confidence per bin (0 for empty bins)
    accuracy: list[float]  # accuracy per bin (0 for empty bins)
    ece: float  # expected calibration error: sum over bins of |acc - conf| * share


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> Reliability:
    """The reliability diagram's bins of the top-1 prediction, and its expected calibration error (ECE).

    ``ece`` is torchmetrics' (``metrics.calibration_error``), and the bins are torchmetrics' too:
    the confidence rounded to float32, bin i holding [i/bins, (i+1)/bins). torchmetrics scores a
    confidence of exactly 1 as a bin of its own; the diagram shows it in the last bin, which then
    covers [(bins-1)/bins, 1]. So ``ece`` is the sum of |accuracy - confidence| * share over these
    bins, except where that last bin mixes confidences below 1 with confidences of exactly 1 and
    their gaps have opposite signs: there torchmetrics' sum is the larger.
    """
    confidence, preds = probs.max(1)
    correct = (preds == labels).double()
    confidence = confidence.float().double()  # what torchmetrics bins
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(max=bins - 1)
    counts = torch.bincount(index, minlength=bins)
    safe = counts.clamp(min=1).double()
    mean_conf = torch.bincount(index, weights=confidence, minlength=bins) / safe
    mean_acc = torch.bincount(index, weights=correct, minlength=bins) / safe
    return Reliability(
        edges.tolist(), counts.tolist(), mean_conf.tolist(), mean_acc.tolist(), calibration_error(probs, labels, bins)
    )


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under ``softmax(logits / temperature)``."""
    return float(F.cross_entropy(logits.double() / temperature, labels)) if len(labels) else 0.0


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T > 0 minimizing the NLL of ``softmax(logits / T)`` (Guo et al., 2017).

    Dividing all logits by one positive number never changes the argmax, so accuracy stays the
    same while confidences become calibrated. Optimized over log T, so T stays positive.
    """
    if not len(labels):
        raise ValueError("cannot fit a temperature on zero samples")
    logits = logits.detach().double()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature) or nll(logits, labels, temperature) > nll(logits, labels):
        return 1.0  # e.g. perfectly separated logits: any T -> 0 helps; keep the model as it is
    return temperature


def bootstrap_ci(
    preds: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of accuracy and macro F1 over the evaluated samples.

    Returns ``{"accuracy": [low, high], "f1": [low, high]}``. The samples are resampled with
    replacement ``resamples`` times (seeded, so a report is reproducible). F1 is averaged over the classes
    present in the split, as ``metrics.SplitMetrics`` averages it.
    """
    n = len(labels)
    if n == 0:
        return {"accuracy": [0.0, 0.0], "f1": [0.0, 0.0]}
    present = torch.bincount(labels, minlength=num_classes) > 0
    generator = torch.Generator().manual_seed(seed)
    accuracy, f1 = [], []
    for start in range(0, resamples, 100):  # chunks bound the memory: 100 x N indices at a time
        count = min(100, resamples - start)
        index = torch.randint(n, (count, n), generator=generator)
        pairs = labels[index] * num_classes + preds[index] + torch.arange(count).view(-1, 1) * num_classes**2
        cms = (
            torch.bincount(pairs.flatten(), minlength=count * num_classes**2)
            .view(count, num_classes, num_classes)
            .double()
        )
        tp = cms.diagonal(dim1=1, dim2=2)
        support, predicted = cms.sum(2), cms.sum(1)
        precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
        recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
        f1_per_class = torch.where(
            precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.zeros_like(tp)
        )
        accuracy.append(tp.sum(1) / n)
        f1.append(f1_per_class[:, present].mean(1))
    tail = (1 - level) / 2
    return {
        name: torch.quantile(torch.cat(values), torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
        for name, values in (("accuracy", accuracy), ("f1", f1))
    }


def worst_mistakes(probs: torch.Tensor, labels: torch.Tensor, count: int = 16) -> list[int]:
    """Indices of the misclassified samples the model was most confident about."""
    confidence, preds = probs.max(1)
    wrong = (preds != labels).nonzero().flatten()
    order = confidence[wrong].argsort(descending=True)
    return wrong[order[:count]].tolist()
