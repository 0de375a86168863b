"""Frozen-backbone feature caching: run the backbone once, then train only the head.

With a frozen backbone (in eval mode) and no random augmentation, every epoch would compute the
same backbone features again. They are computed once per split instead, and later epochs feed
them straight to the head, which holds all the trainable parameters.

With a random train augmentation, ``views`` augmented copies of every training image go through
the backbone once, and epoch ``e`` trains the head on copy ``e mod views``: augmentation at the
cost of ``views`` forward passes in all instead of one forward and backward pass per epoch.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.utils.data import Dataset, TensorDataset

from imgclf.models.classifier import Classifier
from imgclf.progress import progress as progress_bar
from imgclf.training.device import to_device
from imgclf.training.engine import TrainLoader


def why_not_cacheable(model: Classifier, random_augmentation: bool, batch_mix: bool, views: int = 1) -> str | None:
    """None when backbone features (of ``views`` augmented copies) can be cached, else the reason they cannot.

    With ``unfreeze_at_epoch`` K the features serve the epochs before K only (the whole network trains on
    images from K on); a random train augmentation then applies from K, and the cached features are of the
    un-augmented images (unless ``views > 1``)."""
    net = model.net
    if not hasattr(net, "backbone") or not hasattr(net, "head"):
        return f"{type(net).__name__} has no separate backbone and head"
    unfreeze = getattr(net, "unfreeze_at_epoch", None)
    if getattr(net, "freeze", "none") != "backbone":
        return "the backbone is not frozen (set model.freeze=backbone)"
    if unfreeze == 0:
        return (
            "model.unfreeze_at_epoch=0 trains the whole network from the first epoch, so no epoch could use "
            "cached features (set model.unfreeze_at_epoch to the number of head-only epochs)"
        )
    if random_augmentation and views == 1 and unfreeze is None:
        return (
            "the train augmentation is random, so every epoch needs new features (use augmentation=none, "
            "trainer.feature_views=N to cache N augmented copies of every image, or trainer.cache_features=false)"
        )
    if views > 1 and not random_augmentation:
        return (
            f"trainer.feature_views={views} needs a random train augmentation: without one every copy is the same "
            "(set trainer.feature_views=1, or choose an augmentation)"
        )
    if batch_mix:
        return "batch_mix mixes images before the backbone (use batch_mix=none)"
    return None


@torch.no_grad()
def extract(
    model: Classifier,
    loader: Iterable,
    device: torch.device,
    desc: str = "features",
    progress: bool = False,
    channels_last: bool = False,
) -> TensorDataset:
    """(features, labels) of every batch of ``loader`` through the frozen backbone."""
    model.eval()
    features, labels = [], []
    for images, targets in progress_bar(loader, desc=desc, unit="batch", enabled=progress):
        features.append(model.net.backbone(model.normalize(to_device(images, device, channels_last))).float())
        labels.append(targets.to(device))
    return TensorDataset(torch.cat(features), torch.cat(labels))


class AugmentedFeatures(Dataset):
    """Backbone features of ``views`` augmented copies of every image; epoch ``e`` reads copy ``e mod views``.

    Args:
        features: (views, images, features).
        labels: (images,).
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels
        self.view = 0

    def set_epoch(self, epoch: int) -> None:
        self.view = epoch % len(self.features)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[self.view, index], self.labels[index]


def extract_views(
    model: Classifier,
    loader: TrainLoader,
    device: torch.device,
    views: int,
    progress: bool = False,
    channels_last: bool = False,
) -> AugmentedFeatures:
    """Features of ``views`` passes over ``loader`` (in order, augmented at random when ``views > 1``):
    pass ``v`` is the loader's epoch ``v``, so seeded batch augmentation draws new parameters for every copy."""
    copies = []
    for view in range(views):
        loader.set_epoch(view)
        copies.append(
            extract(
                model,
                loader,
                device,
                desc=f"features train {view + 1}/{views}",
                progress=progress,
                channels_last=channels_last,
            )
        )
    labels = copies[0].tensors[1]
    return AugmentedFeatures(torch.stack([copy.tensors[0] for copy in copies]), labels)
