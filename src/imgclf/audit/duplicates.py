"""Duplicates: byte-identical files, and near-duplicates that a byte hash cannot see.

A near-duplicate (the same photo resized, re-encoded as JPEG, cropped a little or mirrored) keeps almost the
same embedding in a pretrained backbone, while two different photos of one class do not: the embeddings are
L2-normalised after the dataset's mean embedding is subtracted (what all images share says nothing about
whether two are the same photo), and a pair whose cosine similarity reaches ``threshold`` is reported. The
default threshold (``audit.duplicate_threshold`` 0.75) was measured with EfficientNet-Lite0 at 224 px (an image
and its mirror averaged) on 50 food101_mini photos and 36 made copies of 6 of them: every copy scored 0.80 or more
(the lowest: JPEG quality 30, 0.80; a 10% crop, 0.85; resized 0.5-2x, 0.96; mirrored, 1.0), every pair of
different photos 0.60 or less; without the centring the two ranges come closer (0.91 against 0.69).

Pairs are found in chunks of rows of the similarity matrix (``chunk`` x images floats at a time), so 10,000
images never need the 10,000 x 10,000 matrix at once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Pair:
    """Two images (indices among the audited images, ``a < b``), their similarity, and whether the files are
    byte for byte the same."""

    a: int
    b: int
    similarity: float
    identical: bool = False


def normalised(embeddings: torch.Tensor) -> torch.Tensor:
    """Centred (the mean embedding subtracted) and L2-normalised rows, as float32."""
    embeddings = embeddings.float()
    embeddings = embeddings - embeddings.mean(0, keepdim=True)
    return torch.nn.functional.normalize(embeddings, dim=1)


def similar_pairs(
    embeddings: torch.Tensor, threshold: float, *, chunk: int = 1024, max_pairs: int = 100_000
) -> list[Pair]:
    """Every pair of rows of the normalised ``embeddings`` with cosine similarity >= ``threshold``, most similar
    first (at most ``max_pairs``: a folder of one photo copied a thousand times should not fill the memory)."""
    n = len(embeddings)
    found: list[tuple[float, int, int]] = []
    for start in range(0, n, chunk):
        block = embeddings[start : start + chunk] @ embeddings.T  # (chunk, n)
        rows = torch.arange(start, min(start + chunk, n)).unsqueeze(1)
        block[torch.arange(n).unsqueeze(0) <= rows] = -2.0  # each pair once, never an image with itself
        hits = torch.nonzero(block >= threshold)
        for r, c in hits.tolist():
            found.append((float(block[r, c]), start + r, c))
        if len(found) > 2 * max_pairs:
            found = sorted(found, reverse=True)[:max_pairs]
    found = sorted(found, key=lambda t: (-t[0], t[1], t[2]))[:max_pairs]
    return [Pair(a, b, round(s, 4)) for s, a, b in found]


def identical_pairs(digests: Sequence[str | None]) -> list[Pair]:
    """Pairs of images whose files have the same content hash (every pair within a group of copies)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, digest in enumerate(digests):
        if digest:
            groups[digest].append(index)
    return [
        Pair(a, b, 1.0, identical=True)
        for members in groups.values()
        for i, a in enumerate(members)
        for b in members[i + 1 :]
    ]


def duplicates(embeddings: torch.Tensor, digests: Sequence[str | None], threshold: float) -> list[Pair]:
    """Identical files first, then near-duplicates by similarity (a pair of identical files listed once)."""
    exact = identical_pairs(digests)
    seen = {(p.a, p.b) for p in exact}
    near = [p for p in similar_pairs(normalised(embeddings), threshold) if (p.a, p.b) not in seen]
    return exact + near
