"""The quickstart's data: real handwritten digits from scikit-learn, written once as PNG folders."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgclf.data.folder import FolderSource, Splits

log = logging.getLogger(__name__)

SPLIT_SEED = 0
FRACTIONS = {"val": 0.15, "test": 0.15}


class DigitsSource(FolderSource):
    """A :class:`FolderSource` that writes the digits into its own folder, ``home``, first if they are not there.

    Any other ``root`` is read as a plain folder (``test.py`` may evaluate a digits model on other digit
    images) and never written to; training refuses it (:attr:`foreign_root`), because the quickstart's
    settings are made for 8x8 digits and a mistyped path must never train on something else.

    Args:
        root: the folder to read (absolute).
        home: the quickstart's own folder (absolute), the only one the digits are written to; None: ``root``.
        **kwargs: as for :class:`FolderSource`.
    """

    def __init__(self, root: str, home: str | None = None, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.home = Path(home) if home is not None else self.root
        self.foreign_root = self.root.absolute() != self.home.absolute()

    def class_names(self) -> list[str]:
        self._write()
        return super().class_names()

    def scan(self) -> Splits:
        self._write()
        return super().scan()

    def _write(self) -> None:
        if not self.foreign_root:
            write_digits(self.root)


def write_digits(root: str | Path) -> Path:
    """Write sklearn's 1,797 digits as ``root/{train,val,test}/<digit>/<n>.png`` if ``root`` is
    missing or empty.

    The split is stratified and fixed (seed 0: 70% / 15% / 15%), so every run and every
    machine evaluates on the same test images.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        return root  # written before: never touched again
    from sklearn.datasets import load_digits  # imported only when the folder is missing

    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0) + 0.5, 0, 255).astype(np.uint8)
    rng = np.random.default_rng(SPLIT_SEED)
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == label))
        n_val, n_test = (round(len(idx) * FRACTIONS[s]) for s in ("val", "test"))
        parts = {"val": idx[:n_val], "test": idx[n_val : n_val + n_test], "train": idx[n_val + n_test :]}
        for split, members in parts.items():
            folder = tmp / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in members:
                Image.fromarray(images[i], mode="L").save(folder / f"{i:04d}.png")
    try:
        tmp.rename(root)  # the folder appears complete or not at all
    except OSError:  # another process (a sweep job) wrote it first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (root / "train").is_dir():
            raise
    log.info("wrote %d handwritten digits to %s", len(images), root)
    return root
