"""The part of the test report that explains mistakes: the most-confused class pairs with examples, and class
activation maps of the most confident mistakes and of a few correct images per class."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from imgclf.reporting import cam, confusion
from imgclf.reporting.statistics import worst_mistakes

CAM_CLASSES = 16  # classes with correct examples in cam_correct.png at most (those of lowest recall): bounds its cost


@dataclass
class Explain:
    """What the report explains, and how much of it (each count bounds the time it costs).

    Args:
        pairs: most-confused class pairs in report.md, confused_pairs.csv and .png (0: none).
        cams: most confident mistakes drawn with their class activation map in cam_mistakes.png (0: none).
        cams_per_class: correctly classified images per class in cam_correct.png (0: none).
        maker: computes the maps (a :class:`cam.CamMaker` of the model); None: no maps.
    """

    pairs: int = 10
    cams: int = 8
    cams_per_class: int = 2
    maker: Callable[[Sequence[np.ndarray], Sequence[int]], list[np.ndarray]] | None = None


def figures(
    options: Explain,
    probs: torch.Tensor,
    labels: torch.Tensor,
    cm: torch.Tensor,
    names: Sequence[str],
    picture: Callable[[int], np.ndarray],
    paths: Sequence[str],
) -> tuple[list[confusion.ConfusedPair], dict[str, Any]]:
    """The most-confused pairs (with their examples) and the figures by file stem: ``confused_pairs``,
    ``cam_mistakes``, ``cam_correct`` (each only when it has something to show)."""
    pairs = confusion.most_confused(cm, top=options.pairs) if options.pairs else []
    confusion.add_examples(pairs, probs, labels)
    drawn = {"confused_pairs": confusion.pairs_figure(pairs, names, picture, probs, paths)}
    if options.maker is not None:
        drawn.update(_cams(options, options.maker, probs, labels, names, picture))
    return pairs, {name: fig for name, fig in drawn.items() if fig is not None}


def _cams(
    options: Explain,
    maker: Callable[[Sequence[np.ndarray], Sequence[int]], list[np.ndarray]],
    probs: torch.Tensor,
    labels: torch.Tensor,
    names: Sequence[str],
    picture: Callable[[int], np.ndarray],
) -> dict[str, Any]:
    draw = partial(cam.cam_figure, maker, probs=probs, labels=labels, names=names, picture=picture)
    drawn = {}
    if options.cams:
        mistakes = worst_mistakes(probs, labels, options.cams)
        drawn["cam_mistakes"] = draw(
            mistakes, title=f"class activation maps of the {len(mistakes)} most confident mistakes (predicted class)"
        )
    if options.cams_per_class:
        drawn["cam_correct"] = draw(
            cam.correct_per_class(probs, labels, options.cams_per_class, CAM_CLASSES),
            title=f"class activation maps of correct images (up to {options.cams_per_class} per class)",
            empty="no correct image",
        )
    return drawn


def markdown(
    options: Explain,
    pairs: list[confusion.ConfusedPair],
    pics: dict[str, Any],
    names: Sequence[str],
    paths: Sequence[str],
) -> str:
    """report.md's sections on the pairs and the maps."""
    text = confusion.pairs_markdown(pairs, names, paths, "confused_pairs" in pics) if options.pairs else ""
    if options.maker is None:
        return text
    method = getattr(options.maker, "method", "")
    layers = ", ".join(f"`{name}`" for name, _ in getattr(options.maker, "layers", None) or [])
    maps = [f"![{stem.replace('_', ' ')}]({stem}.png)" for stem in ("cam_mistakes", "cam_correct") if stem in pics]
    if not maps:
        return text + "\n## Class activation maps\n\nNone: the network has no spatial feature map to weigh.\n"
    return (
        text
        + f"""
## Class activation maps

Where the model found the evidence for the class it predicted ({method}, red: most; layer {layers}), over the
images as the model saw them.

"""
        + "\n\n".join(maps)
        + "\n"
    )
