"""imgclf.reporting.metrics (torchmetrics) against scikit-learn and independent numpy computations,
and statistics.reliability's bins against torchmetrics' calibration error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from torchmetrics.functional.classification import (
    multiclass_calibration_error,
    multiclass_precision,
)

from imgclf.reporting.metrics import (
    SplitMetrics,
    calibration_error,
    confusion_matrix,
    summarize,
    topk_accuracy,
)
from imgclf.reporting.statistics import reliability

C = 7
NEVER_PREDICTED, NO_SUPPORT, ABSENT = 4, 5, 6  # ABSENT: neither predicted nor in the labels


def awkward_split(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and labels where class 4 is never predicted (but has support), class 5 has
    no support (but is predicted) and class 6 is neither predicted nor present."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C, generator=g) * 2
    logits[:, [NEVER_PREDICTED, ABSENT]] -= 100
    labels = torch.randint(0, C, (n,), generator=g)
    labels[labels == NO_SUPPORT] = 0
    labels[labels == ABSENT] = 1
    labels[: n // 3] = logits[: n // 3].argmax(1).clamp(max=3)  # better than chance, and imbalanced
    return logits, labels


def test_the_split_is_as_awkward_as_intended() -> None:
    logits, labels = awkward_split()
    preds = logits.argmax(1)
    predicted, present = set(preds.tolist()), set(labels.tolist())
    assert NEVER_PREDICTED in present - predicted and NO_SUPPORT in predicted - present
    assert ABSENT not in predicted | present


def test_summarize_agrees_with_sklearn_and_its_zero_division_rule() -> None:
    logits, labels = awkward_split()
    preds = logits.argmax(1).numpy()
    out = summarize(logits, labels, C)
    y = labels.numpy()
    assert out["samples"] == len(y)
    assert out["accuracy"] == accuracy_score(y, preds)
    p, r, f, support = precision_recall_fscore_support(y, preds, labels=range(C), zero_division=0)
    # precision and recall are one float64 division of the same counts: bit for bit sklearn's
    assert out["per_class_precision"] == p.tolist() and out["per_class_recall"] == r.tolist()
    assert out["per_class_f1"] == pytest.approx(f.tolist(), rel=1e-12, abs=0)
    assert out["per_class_support"] == support.tolist()
    assert out["per_class_precision"][NEVER_PREDICTED] == 0.0 and out["per_class_recall"][NO_SUPPORT] == 0.0
    present = [c for c in range(C) if c not in (NO_SUPPORT, ABSENT)]  # the macro average is over these (J8)
    assert out["absent_classes"] == [NO_SUPPORT, ABSENT]
    for average, suffix, labels_ in (("macro", "", present), ("weighted", "_weighted", range(C))):
        expected = precision_recall_fscore_support(y, preds, labels=labels_, average=average, zero_division=0)
        got = (out["precision" + suffix], out["recall" + suffix], out["f1" + suffix])
        assert got == pytest.approx(expected[:3], rel=1e-12, abs=1e-15)
    # torchmetrics' own macro drops only the class neither predicted nor present: it keeps NO_SUPPORT's 0
    dropping = float(multiclass_precision(logits.argmax(1), labels, C, average="macro", zero_division=0))
    assert dropping == pytest.approx(out["precision"] * len(present) / (C - 1))
    assert dropping != pytest.approx(out["precision"])
    cm = out["confusion_matrix"]
    assert cm.dtype == torch.int64 and cm.device.type == "cpu"
    assert cm.tolist() == sk_confusion_matrix(y, preds, labels=range(C)).tolist()


def test_scores_are_float64_not_float32() -> None:
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    out = summarize(logits, torch.tensor([0, 1, 1]), 2)
    assert out["accuracy"] == 2 / 3 and out["per_class_precision"] == [1 / 2, 1.0]
    assert out["per_class_recall"] == [1.0, 1 / 2] and out["f1"] == 2 / 3


def test_confusion_matrix_rows_are_true_classes() -> None:
    cm = confusion_matrix(torch.tensor([1, 1, 2]), torch.tensor([0, 1, 1]), 3)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[0, 1, 0], [0, 1, 1], [0, 0, 0]]


def test_split_metrics_over_batches_equals_summarize_of_everything() -> None:
    logits, labels = awkward_split(n=500, seed=3)
    whole = summarize(logits, labels, C)
    metrics = SplitMetrics(C)
    for start, stop in ((0, 7), (7, 7), (7, 200), (200, 333), (333, 500)):  # one batch is empty
        metrics.update(logits[start:stop], labels[start:stop])
    first = metrics.compute()
    assert first.keys() == whole.keys()
    assert {k: v for k, v in first.items() if k != "confusion_matrix"} == {
        k: v for k, v in whole.items() if k != "confusion_matrix"
    }
    assert torch.equal(first["confusion_matrix"], whole["confusion_matrix"])
    assert metrics.compute()["accuracy"] == whole["accuracy"]  # compute() does not consume the counts
    metrics.reset()
    metrics.update(logits[:50], labels[:50])
    assert metrics.compute()["samples"] == 50
    assert metrics.compute()["f1"] == summarize(logits[:50], labels[:50], C)["f1"]


def test_no_samples_gives_zeros() -> None:
    out = summarize(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 3)
    assert out["samples"] == 0 and out["accuracy"] == 0.0 and out["f1_weighted"] == 0.0
    assert out["per_class_recall"] == [0.0] * 3 and out["confusion_matrix"].tolist() == [[0] * 3] * 3
    assert SplitMetrics(3).compute()["precision"] == 0.0
    assert topk_accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 2) == 0.0
    assert calibration_error(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 0.0


def test_topk_accuracy_agrees_with_sklearn() -> None:
    logits, labels = awkward_split(seed=1)
    probs = torch.softmax(logits.double(), 1)
    for k in (1, 2, 3, 5):
        expected = top_k_accuracy_score(labels.numpy(), probs.numpy(), k=k, labels=range(C))
        assert topk_accuracy(probs, labels, k) == pytest.approx(expected, abs=1e-7)
        # the value written to metrics.json has always been a float32 mean
        hits = (probs.topk(k, dim=1).indices == labels.view(-1, 1)).any(1)
        assert topk_accuracy(probs, labels, k) == float(hits.float().mean())
    assert topk_accuracy(probs, labels, C + 3) == topk_accuracy(probs, labels, C) == 1.0  # k clamped to C


def numpy_ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE with torchmetrics' binning, in numpy: float32 confidences, bins [i/b, (i+1)/b), and
    a confidence of exactly 1 in a bin of its own."""
    p = probs.numpy()
    conf = p.max(1).astype(np.float32).astype(np.float64)
    correct = p.argmax(1) == labels.numpy()
    index = np.searchsorted(np.linspace(0, 1, bins + 1), conf, side="right") - 1
    gaps = [abs(correct[index == b].mean() - conf[index == b].mean()) * (index == b).sum() for b in np.unique(index)]
    return float(sum(gaps) / len(conf))


def binned_ece(rel) -> float:
    counts = np.array(rel.counts, dtype=np.float64)
    return float((np.abs(np.array(rel.accuracy) - np.array(rel.confidence)) * counts).sum() / counts.sum())


@pytest.mark.parametrize("scale", [0.5, 2.0, 8.0, 60.0])  # 60: many confidences round to 1 in float32
def test_ece_is_torchmetrics_and_the_reliability_bins_add_up_to_it(scale: float) -> None:
    logits, labels = awkward_split(n=2000, seed=2)
    probs = torch.softmax(logits.double() * scale, 1)
    ece = calibration_error(probs, labels)
    assert ece == pytest.approx(numpy_ece(probs, labels), rel=1e-12, abs=1e-15)
    # torchmetrics' own float32 sums: the same up to float32 rounding
    assert ece == pytest.approx(float(multiclass_calibration_error(probs, labels, C, n_bins=15)), abs=1e-6)
    rel = reliability(probs, labels)
    assert rel.ece == ece
    assert sum(rel.counts) == len(labels) and len(rel.counts) == 15 and len(rel.edges) == 16
    assert binned_ece(rel) == pytest.approx(ece, rel=1e-12, abs=1e-15)


def test_reliability_bins_are_closed_on_the_left_like_torchmetrics() -> None:
    # with 4 bins the edges 0.5 and 0.75 are exact: torchmetrics puts 0.5 in [0.5, 0.75), not (0.25, 0.5]
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.75, 0.25, 0.0], [0.75, 0.25, 0.0], [0.3, 0.7, 0.0]], dtype=torch.float64)
    labels = torch.tensor([1, 0, 1, 1])
    rel = reliability(probs, labels, bins=4)
    assert rel.counts == [0, 0, 2, 2]  # 0.5 and 0.7 in bin 2, both 0.75 in bin 3
    assert rel.accuracy == [0.0, 0.0, 0.5, 0.5]
    conf = (0.5 + float(np.float32(0.7))) / 2  # torchmetrics bins float32 confidences
    assert rel.confidence[2] == pytest.approx(conf, rel=1e-15)
    expected = (abs(0.5 - conf) * 2 + abs(0.5 - 0.75) * 2) / 4
    assert rel.ece == calibration_error(probs, labels, bins=4)
    assert rel.ece == pytest.approx(expected, rel=1e-12) == binned_ece(rel)


def test_a_confidence_of_one_is_its_own_bin_in_torchmetrics() -> None:
    # 10 underconfident right answers at 0.95 and 2 confidently wrong ones at exactly 1: torchmetrics
    # scores them apart (0.05 * 10 + 1 * 2) / 12; the diagram shows them together in its last bin
    probs = torch.tensor([[0.95, 0.05]] * 10 + [[1.0, 0.0]] * 2, dtype=torch.float64)
    labels = torch.tensor([0] * 10 + [1] * 2)
    ece = calibration_error(probs, labels)
    assert ece == pytest.approx((0.05 * 10 + 2) / 12, abs=1e-7)
    assert ece == pytest.approx(numpy_ece(probs, labels), rel=1e-12)
    rel = reliability(probs, labels)
    assert rel.ece == ece and rel.counts[-1] == 12
    assert binned_ece(rel) == pytest.approx(abs(10 - (0.95 * 10 + 2)) / 12, abs=1e-7)
