"""From sample lists to datasets: decode through the cache, apply the bad-file policy, and
check that no file changed since the splits were made."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch.utils.data import Dataset

from imgclf.data.cache import DecodeCache, FileReport
from imgclf.data.dataset import DecodedImages, LazyImages
from imgclf.data.folder import BAD_FILE_POLICIES, Splits  # noqa: F401  (BAD_FILE_POLICIES: imported from here too)
from imgclf.errors import DataError
from imgclf.filenames import shown

log = logging.getLogger(__name__)

SHOWN = 20  # bad files listed in an error message


@dataclass
class LoadedSplit:
    """One split after decoding: the samples kept, and where their pixels are."""

    samples: list[tuple[str, int]]
    rows: list[int]  # rows of ``images`` (or of the report) of the kept samples
    images: torch.Tensor | None  # None: decode on the fly
    report: FileReport
    resize: str = "squash"  # how the images were fitted to the square (images.RESIZE_MODES)
    name: str = ""  # train, val, test: named in errors

    def dataset(
        self, image_size: int, transform: Callable | None, batched: bool = True, bad_files: str = "stop"
    ) -> Dataset:
        """Serve the split; ``batched``: augment whole batches when the transform allows it; ``bad_files``:
        whether a loader stops at a sample that fails to load now, or drops it (see ``dataset.py``)."""
        labels = [label for _, label in self.samples]
        if self.images is None:
            return LazyImages(
                [p for p, _ in self.samples],
                labels,
                image_size,
                transform,
                batched=batched,
                resize=self.resize,
                split=self.name,
                bad_files=bad_files,
            )
        return DecodedImages(
            self.images, labels, transform, rows=self.rows, batched=batched, split=self.name, bad_files=bad_files
        )


def load_splits(
    splits: Splits,
    cache: DecodeCache,
    image_size: int,
    *,
    names: tuple[str, ...],
    bad_files: str = "stop",
    resize: str = "squash",
    recorded: dict[str, str] | None = None,
) -> dict[str, LoadedSplit]:
    """Decode (or find in the cache) every split in ``names`` at ``image_size`` (fitted by ``resize``);
    bad files stop or are skipped. A file that is gone is a bad file, and so is, with ``recorded`` (the
    SHA-1s splits.csv recorded, when resuming), one whose content is no longer the one recorded.

    Raises:
        DataError: with ``bad_files=stop``, listing every file that cannot be used.
    """
    loaded, bad = {}, []
    for name in names:
        samples = splits.samples.get(name) or []
        gone = [(name, p, "is gone (no such file)") for p, _ in samples if not os.path.exists(p)]
        samples = [s for s in samples if os.path.exists(s[0])] if gone else samples
        images, report = cache.load([p for p, _ in samples], image_size, desc=f"decode {name}", resize=resize)
        report = _changed_are_bad(report, recorded) if recorded else report
        bad += gone + [(name, report.paths[i], reason) for i, reason in sorted(report.errors.items())]
        rows = report.good()
        loaded[name] = LoadedSplit([samples[i] for i in rows], rows, images, report, resize, name)
    if bad and bad_files == "stop":
        listed = "\n  ".join(f"[{split}] {shown(path)}: {reason}" for split, path, reason in bad[:SHOWN])
        more = f"\n  ... and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        raise DataError(
            f"{len(bad)} file(s) cannot be used:\n  {listed}{more}\n"
            "fix or remove them, or set dataset.bad_files=skip to train without them"
        )
    if bad:
        log.warning(
            "skipping %d unusable file(s) (dataset.bad_files=skip), e.g. %s: %s", len(bad), shown(bad[0][1]), bad[0][2]
        )
    _check_classes_left(loaded, splits.classes)
    return loaded


def _changed_are_bad(report: FileReport, recorded: dict[str, str]) -> FileReport:
    """``report`` with the files whose SHA-1 differs from the recorded one as errors (a copy)."""
    changed = {
        i: f"changed since this experiment's splits.csv recorded it (SHA-1 {recorded[p][:12]}... -> {digest[:12]}...)"
        for i, (p, digest) in enumerate(zip(report.paths, report.digests, strict=True))
        if digest and recorded.get(p) and recorded[p] != digest and i not in report.errors
    }
    return replace(report, errors={**report.errors, **changed}) if changed else report


def _check_classes_left(loaded: dict[str, LoadedSplit], classes: list[str]) -> None:
    if "train" not in loaded:
        return
    present = {label for _, label in loaded["train"].samples}
    empty = [name for i, name in enumerate(classes) if i not in present]
    if empty:
        raise DataError(f"no usable training images left for class(es) {empty}")


def digests_by_path(loaded: dict[str, LoadedSplit]) -> dict[str, str]:
    """SHA-1 of every readable file, by path."""
    out = {}
    for split in loaded.values():
        for path, digest in zip(split.report.paths, split.report.digests, strict=True):
            if digest is not None:
                out[path] = digest
    return out


def changed_files(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """Paths whose content differs from what ``splits.csv`` recorded."""
    return sorted(p for p, digest in recorded.items() if digest and current.get(p) not in (None, digest))
