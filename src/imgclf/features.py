"""Frozen-backbone feature caching: run the backbone once, then train only the head.

With a frozen backbone (in eval mode) and no random augmentation, every epoch would compute the
same backbone features again. They are computed once per split instead, and later epochs feed
them straight to the head, which holds all the trainable parameters.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.utils.data import TensorDataset
from tqdm import tqdm

from imgclf.models.classifier import Classifier


def why_not_cacheable(model: Classifier, random_augmentation: bool, batch_mix: bool) -> str | None:
    """None when backbone features can be cached, else the reason they cannot."""
    net = model.net
    if not hasattr(net, "backbone") or not hasattr(net, "head"):
        return f"{type(net).__name__} has no separate backbone and head"
    if getattr(net, "freeze", "none") != "backbone" or getattr(net, "unfreeze_at_epoch", None) is not None:
        return "the backbone is not frozen for the whole run (set model.freeze=backbone, model.unfreeze_at_epoch=null)"
    if random_augmentation:
        return ("the train augmentation is random, so every epoch needs new features "
                "(use augmentation=none, or trainer.cache_features=false)")
    if batch_mix:
        return "batch_mix mixes images before the backbone (use batch_mix=none)"
    return None


@torch.no_grad()
def extract(model: Classifier, loader: Iterable, device: torch.device, desc: str = "features",
            progress: bool = False) -> TensorDataset:
    """(features, labels) of every batch of ``loader`` through the frozen backbone."""
    model.eval()
    features, labels = [], []
    for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
        features.append(model.net.backbone(model.normalize(images.to(device))).float())
        labels.append(targets.to(device))
    return TensorDataset(torch.cat(features), torch.cat(labels))
