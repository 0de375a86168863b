"""What the audit found, in one order shared by every array: the records the files and the summary read."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.audit.duplicates import Pair
from imgclf.audit.issues import LabelIssue
from imgclf.audit.outliers import Outlier
from imgclf.filenames import shown


@dataclass
class Audited:
    """The images audited, in one order shared by every array: absolute paths, their split and given label."""

    root: Path
    paths: list[str]
    splits: list[str]
    labels: np.ndarray
    class_names: list[str]

    def relative(self, index: int) -> str:
        """The path as the CSVs write it: relative to the dataset root (as dataset.exclude reads it)."""
        path = self.paths[index]
        try:
            rel = os.path.relpath(path, self.root)
        except ValueError:  # another drive (Windows)
            rel = path
        return shown(path if rel.startswith("..") else rel)


@dataclass
class Findings:
    issues: list[LabelIssue]
    pairs: list[Pair]
    outliers: list[Outlier]
    probs: np.ndarray
    notes: dict[str, str] = field(default_factory=dict)  # what the summary says about how it was found
