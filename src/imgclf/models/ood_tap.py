"""The out-of-distribution score of every image a model (bare or wrapped for test-time augmentation) classifies,
recorded as it runs: one forward pass gives both the outputs and the score (:mod:`imgclf.abstain` applies it).

Two scores, both high for images like the training data:

- ``energy``: ``T * logsumexp(logits / T)`` (Liu et al., 2020) of the network's own logits;
- ``knn``: the cosine similarity of an image's features (the input of the network's head) to its k-th nearest image
  in a bank of training images' features (Sun et al., ICML 2022, "Out-of-distribution detection with deep nearest
  neighbors"). It sees what the features say about the image, which the logits of a few classes throw away.

A test-time-augmentation wrapper returns log-probabilities, whose logsumexp is 0 for every image: the score must be
read inside the wrapper. The tap does that with forward hooks: the outer model's call opens a batch, every call of
the :class:`Classifier` inside adds its views, and a batch's score is the mean of the views' energy scores, or the
kNN score of the views' mean features (an image and its mirror image with ``tta=flip``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from imgclf.models.classifier import Classifier

KINDS = ("energy", "knn")
BANK_KEY = "ood_bank"  # a checkpoint's (N, D) float16 unit-length training features, with abstain.ood=knn


def inner_classifier(model: nn.Module) -> Classifier:
    """The :class:`Classifier` inside ``model`` (itself, or the one a TTA wrapper holds)."""
    inner = [m for m in model.modules() if isinstance(m, Classifier)]
    if not inner:
        raise TypeError(f"{type(model).__name__} holds no imgclf Classifier to read scores from")
    return inner[0]


def feature_module(classifier: Classifier) -> nn.Module:
    """The module whose input is an image's features: the network's ``head`` (a pretrained backbone's pooled
    features, or a scratch network's last feature map), else its last linear layer."""
    head = getattr(classifier.net, "head", None)
    if isinstance(head, nn.Module):
        return head
    linears = [m for m in classifier.net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"{type(classifier.net).__name__} has no head module and no linear layer to read features at")
    return linears[-1]


def pooled(features: torch.Tensor) -> torch.Tensor:
    """(B, D) float features: a feature map (B, D, ...) averaged over its positions."""
    features = features.detach().float()
    return features.flatten(2).mean(2) if features.dim() > 2 else features


def unit_rows(features: torch.Tensor) -> torch.Tensor:
    """Rows scaled to length 1 (a zero row stays zero)."""
    return features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)


def knn_similarity(features: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """(B,) cosine similarity of each row of ``features`` to its ``k``-th most similar row of ``bank`` (unit rows);
    ``k`` is clamped to the bank's size."""
    similarity = unit_rows(features) @ bank.float().T
    return torch.topk(similarity, min(int(k), bank.shape[0]), dim=1).values[:, -1]


class OodTap:
    """Records the ``kind`` score of every image while ``model`` runs (a context manager).

    Args:
        model: a :class:`Classifier`, or a module holding one (``with_tta``'s wrappers).
        kind: one of :data:`KINDS`, or ``"features"`` to record the mean features only (a kNN bank is built so).
        temperature: ``energy``: the calibrated temperature (the score scales with it, as the probabilities do).
        bank: ``knn``: (N, D) unit-length features of training images.
        k: ``knn``: which nearest image's similarity is the score.
    """

    def __init__(
        self,
        model: nn.Module,
        kind: str = "energy",
        *,
        temperature: float = 1.0,
        bank: torch.Tensor | None = None,
        k: int = 10,
    ) -> None:
        if kind not in (*KINDS, "features"):
            raise ValueError(f"unknown out-of-distribution score {kind!r}: one of {', '.join(KINDS)}")
        if kind == "knn" and (bank is None or len(bank) == 0):
            raise ValueError("the knn score needs a bank of training features")
        self.outer, self.inner = model, inner_classifier(model)
        self.kind, self.temperature, self.bank, self.k = kind, float(temperature), bank, int(k)
        self.batches: list[list[torch.Tensor]] = []
        self._handles: list[Any] = []

    def __enter__(self) -> OodTap:
        if self.kind == "energy":
            hook = self.inner.register_forward_hook(self._record_logits)
        else:
            hook = feature_module(self.inner).register_forward_hook(self._record_features)
        self._handles = [self.outer.register_forward_pre_hook(lambda *_: self.batches.append([])), hook]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _add(self, value: torch.Tensor) -> None:
        if not self.batches:  # the Classifier called on its own, outside the outer model
            self.batches.append([])
        self.batches[-1].append(value)

    def _record_logits(self, _module: nn.Module, _inputs: Any, logits: torch.Tensor) -> None:
        t = self.temperature
        self._add(t * torch.logsumexp(logits.detach().float() / t, dim=1))

    def _record_features(self, _module: nn.Module, inputs: Any, _output: Any) -> None:
        self._add(pooled(inputs[0]))

    def batch_scores(self, views: list[torch.Tensor]) -> torch.Tensor:
        """One batch's (B,) scores from what its views recorded (the exporters trace this)."""
        mean = torch.stack(views).mean(0)
        if self.kind == "knn":
            assert self.bank is not None
            if mean.shape[1] != self.bank.shape[1]:
                raise ValueError(
                    f"the kNN bank holds {self.bank.shape[1]} values per training image but this model's features "
                    f"have {mean.shape[1]}: the bank belongs to another model (fit it again with calibrate=true)"
                )
            return knn_similarity(mean, self.bank.to(mean.device), self.k)
        return mean  # energy: the mean of the views' scores; features: the mean features

    def scores(self) -> torch.Tensor:
        """(N,) scores of every image since the tap opened (or since the last call), in order, on the CPU
        (``kind="features"``: (N, D) mean features)."""
        out = [self.batch_scores(views).cpu() for views in self.batches if views]
        self.batches = []
        return torch.cat(out) if out else torch.zeros(0)


def score_tap(
    model: nn.Module,
    ood: str | None,
    *,
    temperature: float = 1.0,
    bank: torch.Tensor | None = None,
    k: int | None = None,
) -> OodTap:
    """The tap of a model's "not sure" record: the kNN score with its ``bank`` when ``ood`` is ``knn``, else the
    energy score at ``temperature``."""
    if ood == "knn":
        return OodTap(model, "knn", bank=bank, k=int(k or 1))
    return OodTap(model, "energy", temperature=temperature)


def checkpoint_tap(model: nn.Module, payload: dict[str, Any]) -> OodTap:
    """The tap that scores images as a checkpoint's "not sure" record (``payload["abstain"]``) says."""
    record = payload.get("abstain") or {}
    temperature = float(payload.get("temperature", 1.0))
    return score_tap(
        model, record.get("ood"), temperature=temperature, bank=payload.get(BANK_KEY), k=record.get("ood_k")
    )
