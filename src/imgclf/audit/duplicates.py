"""Duplicates: byte-identical files, and copies that a byte hash cannot see (resized, re-encoded, cropped, mirrored).

Two steps, each doing what it is good at. The embeddings of a pretrained backbone (centred: the dataset's mean
embedding subtracted, then L2-normalised) propose candidates: each image's ``neighbours`` nearest images. The
pixels decide (``pixel_match``): a pair is a copy when the grey thumbnails of the two, best aligned over crop
windows and the mirror image, correlate at least ``threshold``. No similarity of embeddings separates copies from
different photos of one subject on every folder (on plates, 40 photos of plates on one table, a planted copy scored
0.63 while different photos scored up to 0.84; on food101_mini copies scored 0.80 and more, different photos 0.60 or
less), and the rank does: the planted copies measured were each other's nearest image. The pixel correlation
threshold (``audit.duplicate_threshold`` 0.97) was measured on made copies of 120 food101_mini, plates and flowers5
photos (resized 0.5-2x, JPEG quality 30, 10% crops off-centre, mirrored, brightened 30%, and combinations): every
copy of those kinds 0.984 or more (brightened by 30%, clipped: 0.966 or more, 5% under 0.983); different photos at
most 0.79 on food101_mini and 0.65 on flowers5, but up to 0.963 on plates, whose photos differ by little more than
the plate.

Neighbours are found in chunks of rows of the similarity matrix (``chunk`` x images floats at a time), so 10,000
images never need the 10,000 x 10,000 matrix at once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from imgclf.audit.pixel_match import correlations


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


def nearest_pairs(embeddings: torch.Tensor, neighbours: int, *, chunk: int = 1024) -> list[tuple[int, int]]:
    """The pairs ``(a, b)``, ``a < b``, in which one image is among the other's ``neighbours`` most similar rows of
    the normalised ``embeddings`` (each pair once, in order)."""
    n = len(embeddings)
    k = min(neighbours, n - 1)
    if k < 1:
        return []
    found: set[tuple[int, int]] = set()
    for start in range(0, n, chunk):
        block = embeddings[start : start + chunk] @ embeddings.T  # (chunk, n)
        rows = torch.arange(start, min(start + chunk, n))
        block[rows - start, rows] = -3.0  # never an image with itself
        nearest = block.topk(k, dim=1).indices
        for r, row in enumerate(nearest.tolist()):
            found.update((min(start + r, c), max(start + r, c)) for c in row)
    return sorted(found)


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


def duplicates(
    embeddings: torch.Tensor,
    digests: Sequence[str | None],
    files: Sequence[str | Path],
    threshold: float,
    *,
    neighbours: int = 10,
) -> list[Pair]:
    """Identical files first, then the copies among each image's ``neighbours`` nearest in the embeddings whose
    pixels correlate at least ``threshold`` (``similarity``: that correlation), most alike first; a pair of
    identical files is listed once."""
    exact = identical_pairs(digests)
    seen = {(p.a, p.b) for p in exact}
    candidates = [pair for pair in nearest_pairs(normalised(embeddings), neighbours) if pair not in seen]
    scored = zip(candidates, correlations(files, candidates), strict=True)
    near = [Pair(a, b, round(c, 4)) for (a, b), c in scored if c >= threshold]
    return exact + sorted(near, key=lambda p: (-p.similarity, p.a, p.b))
