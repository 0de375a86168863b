"""torchvision's datasets (CIFAR-10, Flowers102, Food101, ...) as imgclf folders.

The dataset is opened with torchvision once, then materialized as
``<root>/imgclf_folders/<split>/<class>/<n>.<ext>`` (hard links to the files when torchvision
keeps images as files, PNGs when it keeps arrays), so that the decode-once cache, the doctor,
splits.csv and predict work on it as on any folder.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from hydra.utils import get_class

from imgclf.data.folder import FolderSource, Splits
from imgclf.errors import DataError
from imgclf.progress import progress

log = logging.getLogger(__name__)

FOLDER = "imgclf_folders"


class TorchvisionSource(FolderSource):
    """A ``torchvision.datasets`` class as an imgclf dataset.

    Args:
        root: where torchvision keeps (or downloads) the dataset's files.
        dataset: the class, e.g. ``torchvision.datasets.CIFAR10``.
        splits: imgclf split -> the constructor's keyword arguments for it, e.g.
            ``{train: {train: true}, test: {train: false}}``; missing val/test are carved from train.
        download: let torchvision download the files (needs internet).
        **kwargs: the other :class:`FolderSource` arguments (image_size, normalize, ...).
    """

    def __init__(
        self, root: str, dataset: str, splits: dict[str, dict[str, Any]], download: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(str(Path(root) / FOLDER), **kwargs)
        self.data_root = Path(root)
        self.dataset = dataset
        self.split_args = {name: dict(args or {}) for name, args in splits.items()}
        self.download = download

    def class_names(self) -> list[str]:
        self._materialize()
        return super().class_names()

    def scan(self) -> Splits:
        self._materialize()
        return super().scan()

    def _materialize(self) -> None:
        done = self.root / ".complete"
        if done.exists():
            return
        cls = get_class(self.dataset)
        tmp = self.root.with_name(f"{FOLDER}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for split, args in self.split_args.items():
            data = self._open(cls, args)
            classes = [_folder_name(c) for c in getattr(data, "classes", [])] or None
            files = getattr(data, "_image_files", None)  # torchvision's file-backed datasets
            for i in progress(range(len(data)), desc=f"{cls.__name__} {split}", unit="img"):
                label = _label(data, i, files)
                folder = tmp / split / (classes[label] if classes else str(label))
                folder.mkdir(parents=True, exist_ok=True)
                if files is not None:
                    _link(Path(files[i]), folder / f"{i:06d}{Path(files[i]).suffix}")
                else:
                    data[i][0].save(folder / f"{i:06d}.png")
        shutil.rmtree(self.root, ignore_errors=True)
        tmp.rename(self.root)
        done.touch()
        log.info("materialized %s as class folders in %s", self.dataset, self.root)

    def _open(self, cls: type, args: dict[str, Any]) -> Any:
        try:
            return cls(root=str(self.data_root), download=self.download, **args)
        except (RuntimeError, OSError) as exc:  # torchvision: "Dataset not found or corrupted"
            hint = (
                "the download failed (is there internet?)"
                if self.download
                else "set dataset.download=true to download it (needs internet)"
            )
            raise DataError(
                f"{cls.__name__} is not in {self.data_root.resolve()} ({exc}); put its files there "
                f"as torchvision expects them, or {hint}"
            ) from exc


def _label(data: Any, index: int, files: Any) -> int:
    if files is not None and hasattr(data, "_labels"):
        return int(data._labels[index])  # no need to decode the image for its label
    targets = getattr(data, "targets", None)
    return int(targets[index]) if targets is not None else int(data[index][1])


def _folder_name(name: str) -> str:
    return re.sub(r"[/\\\\:]", "_", str(name)).strip() or "_"


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system: copy
        shutil.copy2(src, dst)
