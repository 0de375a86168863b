"""Why a split carved by a fraction got no image of a class: the rounding that caused it, in numbers,
and what to do (``0.15 x 3 images = 0.45, which rounds to 0``)."""

from __future__ import annotations

from collections import Counter

Sample = tuple[str, int]
SHOWN = 5


def shortfalls(
    pool: list[Sample], carved: dict[str, list[Sample]], fractions: dict[str, float], classes: list[str], pool_name: str
) -> dict[str, str]:
    """A note for each split of ``carved`` (cut from ``pool``, the ``pool_name`` folder, by ``fractions``)
    that a fraction above 0 left without an image of some class; {} when every class got one."""
    totals = Counter(label for _, label in pool)
    notes = {}
    for split, fraction in fractions.items():
        got = Counter(label for _, label in carved.get(split, []))
        short = [(classes[label], totals[label]) for label in sorted(totals) if got[label] == 0]
        if fraction > 0 and short:
            notes[split] = _note(split, fraction, short, len(totals), pool_name)
    return notes


def _note(split: str, fraction: float, short: list[tuple[str, int]], num_classes: int, pool_name: str) -> str:
    key = f"dataset.{split}_fraction"
    sizes = {n for _, n in short}
    if len(short) == num_classes and len(sizes) == 1:
        n = sizes.pop()
        what = f"{key}={fraction:g} of {n} images per class: {_product(fraction, n)}, so the {split} split is empty"
    else:
        listed = "; ".join(f"'{name}' ({n} images: {_product(fraction, n)})" for name, n in short[:SHOWN])
        more = f"; ... and {len(short) - SHOWN} more" if len(short) > SHOWN else ""
        what = f"{key}={fraction:g} carves no {split} image from {len(short)} of {num_classes} classes: {listed}{more}"
    smallest = min(n for _, n in short)
    fixes = [f"{key} >= {f:g}" for f in [min_fraction(smallest)] if f is not None]
    fixes.append(f"at least {min_images(fraction)} images per class in {pool_name}")
    fixes.append(f"a {split}/ folder")
    if split == "test":
        fixes.append(f"{key}=0 to carve no test split")
    return f"{what}. Use {', '.join(fixes[:-1])} or {fixes[-1]}"


def _product(fraction: float, n: int) -> str:
    """``0.15 x 3 = 0.45, which rounds to 0`` (or, rounded to 1 or more: none left to take)."""
    exact, rounded = fraction * n, round(fraction * n)
    if rounded == 0:
        return f"{fraction:g} x {n} = {exact:.3g}, which rounds to 0"
    return f"{fraction:g} x {n} = {exact:.3g}, rounded to {rounded}, but train keeps at least one image of a class"


def min_fraction(n: int) -> float | None:
    """The smallest fraction in hundredths that carves one of ``n`` images and leaves one (None: none does)."""
    return next((k / 100 for k in range(1, 100) if 1 <= round(n * k / 100) <= n - 1), None)


def min_images(fraction: float) -> int:
    """The fewest images per class of which ``fraction`` carves one and leaves one."""
    return next(n for n in range(2, 10**6) if 1 <= round(n * fraction) <= n - 1)
