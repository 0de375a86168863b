"""Which score tells images of unseen classes apart? kNN on the head's input features against max-softmax and
the energy score, on one trained checkpoint (issue 31: the out-of-distribution score must beat max-softmax).

    python benchmarks/ood_knn.py CHECKPOINT --train DIR --known DIR --unseen DIR [DIR ...] [--limit 300]
                                 [--k 1 5 10 20] [--seed 0]

The checkpoint's own predictor (``imgclf.inference.Predictor``: its preprocessing, temperature and test-time
augmentation) runs over the images of ``--train`` (the bank: the classes the model was taught), ``--known`` (held-out
images of those classes: the positives) and each ``--unseen`` folder (at most ``--limit`` images each, a seeded
sample: the negatives). A forward hook reads the input of the classifier's head, the features every score but
max-softmax and energy sees, averaged over the test-time views like the probabilities. The kNN score (Sun et al.,
"Out-of-distribution detection with deep nearest neighbors", ICML 2022) is the cosine similarity of an image's
L2-normalised features to its k-th nearest training image: high for images like the training data. It prints the
AUROC (scikit-learn's ``roc_auc_score``; known positive) of each score per unseen folder.

Measured (2026-12-07, 2 CPU cores; eager PyTorch, 34 min for the 940 images of the three backbones at 384 px with the
flip) on the ``transfer`` model of food101_mini trained by benchmarks/label_noise_pays.py (its clean run: 450 train
photos, 150 test photos known, Lite0+1+2 at 384 px):

| unseen folder | max-softmax | energy | kNN k=1 | kNN k=5 | kNN k=10 | kNN k=20 |
|---|---|---|---|---|---|---|
| flowers5 (300 photos) | 0.527 | 0.544 | 1.000 | 1.000 | 1.000 | 1.000 |
| plates (40 photos) | 0.708 | 0.575 | 0.994 | 0.995 | 0.995 | 0.995 |

This measured the case for ``abstain.ood=knn`` (now an option, ``abstain.ood_k`` 10 by default: k hardly matters
here); ``benchmarks/not_sure.py`` measures the option itself, threshold and all.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from imgclf.inference import Predictor
from imgclf.models.classifier import Classifier

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
BATCH = 16


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--train", type=Path, required=True, help="the images the model was trained on")
    parser.add_argument("--known", type=Path, required=True, help="held-out images of the model's classes")
    parser.add_argument("--unseen", type=Path, nargs="+", required=True, help="folders of classes never taught")
    parser.add_argument("--limit", type=int, default=300, help="images per unseen folder at most (0: all)")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def images(folder: Path, limit: int = 0, seed: int = 0) -> list[Path]:
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in SUFFIXES)
    return sorted(random.Random(seed).sample(files, limit)) if 0 < limit < len(files) else files


def scored(predictor: Predictor, files: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, top probability, energy) of every file; features are the head's input, mean over the views."""
    inner = next(m for m in predictor.model.modules() if isinstance(m, Classifier))
    views: list[torch.Tensor] = []
    handle = inner.net.head.register_forward_hook(lambda _m, inputs, _o: views.append(inputs[0].detach().float()))
    features, top, energy = [], [], []
    try:
        for start in range(0, len(files), BATCH):
            views.clear()
            probs, scores = predictor.scores([predictor.load_image(f) for f in files[start : start + BATCH]])
            features.append(torch.stack(views).mean(0))
            top.append(probs.max(1).values)
            energy.append(scores)
    finally:
        handle.remove()
    return torch.cat(features).numpy(), torch.cat(top).numpy(), torch.cat(energy).numpy()


def knn_score(features: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """Cosine similarity to the k-th nearest row of ``bank`` (rows L2-normalised)."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    return np.sort(unit @ bank.T, axis=1)[:, -k]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    predictor = Predictor.load(args.checkpoint, device="cpu")
    train, _, _ = scored(predictor, images(args.train))
    bank = train / np.linalg.norm(train, axis=1, keepdims=True)
    known = scored(predictor, images(args.known))
    columns = ["max-softmax", "energy", *(f"kNN k={k}" for k in args.k)]
    print(f"| unseen folder | {' | '.join(columns)} |")
    print(f"|---|{'---|' * len(columns)}")
    for folder in args.unseen:
        unseen = scored(predictor, images(folder, args.limit, args.seed))
        truth = np.r_[np.ones(len(known[0])), np.zeros(len(unseen[0]))]
        scores = [np.r_[known[1], unseen[1]], np.r_[known[2], unseen[2]]]
        scores += [np.r_[knn_score(known[0], bank, k), knn_score(unseen[0], bank, k)] for k in args.k]
        aurocs = " | ".join(f"{roc_auc_score(truth, s):.3f}" for s in scores)
        print(f"| {folder.name} ({len(unseen[0])} photos) | {aurocs} |")


if __name__ == "__main__":
    main()
