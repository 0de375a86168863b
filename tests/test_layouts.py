"""Every dataset config trains on data of its layout with a one-line root override; the shared
real datasets scan as documented; torchvision datasets and manifests become folders."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import imgclf.tasks as tasks
from helpers import SHARED_DATA, compose_cfg, draw, make_folder, tiny_overrides
from imgclf.cli.split import main as split_main
from imgclf.data.folder import FolderSource
from imgclf.data.manifest import ManifestSource, read_manifest
from imgclf.errors import ConfigError, DataError
from imgclf.experiment.checkpoint import load_checkpoint
from imgclf.tasks.config_check import check_config


def train_and_test(tmp_path: Path, dataset: str, root: Path, *extra: str) -> tuple[dict, dict]:
    """One epoch with dataset=<dataset> dataset.root=<root>, then test.py; returns (checkpoint, metrics)."""
    args = tiny_overrides(tmp_path, root, f"dataset={dataset}", "epochs=1", "dataset.num_classes=null", *extra)
    args = [a for a in args if not a.startswith("dataset.root")] + [f"dataset.root={root}"]
    tasks.train(compose_cfg("train", args))
    return load_checkpoint(tmp_path / "experiments" / "tiny" / "best.pt"), tasks.test(compose_cfg("train", args))


def split_counts(tmp_path: Path) -> dict[str, int]:
    rows = (tmp_path / "experiments" / "tiny" / "splits.csv").read_text().splitlines()[1:]
    return dict(Counter(row.split(",")[2] for row in rows))


def test_food11_layout_train_and_test_folders(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "food11", {"train": 20, "test": 4})
    ckpt, metrics = train_and_test(tmp_path, "food11", root)
    assert split_counts(tmp_path) == {"train": 51, "val": 9, "test": 12}  # val carved from train (15%)
    assert metrics["split"] == "test" and metrics["samples"] == 12


@pytest.mark.slow
def test_dishes_layout_splits_the_test_folder_into_val_and_test(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "dishes", {"train": 10, "test": 10}, classes=("clean", "dirty"))
    ckpt, metrics = train_and_test(tmp_path, "dishes", root)
    assert split_counts(tmp_path) == {"train": 20, "val": 10, "test": 10}
    assert ckpt["mean"] == pytest.approx([0.519, 0.499, 0.469])  # the project's own statistics
    assert metrics["samples"] == 10


def test_flowers102_folders_with_display_names(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "flowers", {"train": 6, "valid": 2, "test": 2}, classes=("1", "2", "10"))
    (root / "cat_to_name.json").write_text(
        json.dumps({"1": "pink primrose", "2": "hard-leaved pocket orchid", "10": "globe thistle"})
    )
    ckpt, metrics = train_and_test(tmp_path, "flowers102_folders", root, "dataset.image_size=16")
    assert split_counts(tmp_path) == {"train": 18, "val": 6, "test": 6}
    assert ckpt["class_names"] == ["1", "10", "2"]
    assert ckpt["display_names"]["10"] == "globe thistle" and metrics["display_names"]["1"] == "pink primrose"


def test_quality_manifests_and_the_split_writer(tmp_path: Path, capsys) -> None:
    photos = make_folder(tmp_path / "photos", {"all": 10}, classes=("bad", "average", "good"))
    assert (
        split_main(
            [str(photos / "all"), "--out", str(tmp_path / "q"), "--format", "json", "--test", "0.2", "--val", "0"]
        )
        == 0
    )
    assert "test.json: 6 images, average 2, bad 2, good 2" in capsys.readouterr().out
    rows = read_manifest(tmp_path / "q" / "train.json")
    assert len(rows) == 24 and not Path(rows[0][0]).is_absolute()
    for name in ("train.json", "test.json"):
        (photos / "all" / name).write_text((tmp_path / "q" / name).read_text())
    ckpt, metrics = train_and_test(tmp_path, "quality", photos / "all")
    assert split_counts(tmp_path) == {"train": 21, "val": 3, "test": 6}
    assert ckpt["class_names"] == ["average", "bad", "good"] and metrics["samples"] == 6


def test_manifest_formats_and_errors(tmp_path: Path) -> None:
    make_folder(tmp_path, {"img": 2}, classes=("a", "b"))
    files = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "img").rglob("*.*"))
    (tmp_path / "m.csv").write_text("path,label,extra\n" + "".join(f"{f},{f.split('/')[1]},x\n" for f in files))
    (tmp_path / "m.json").write_text(json.dumps({f: f.split("/")[1] for f in files}))
    (tmp_path / "pairs.json").write_text(json.dumps([[f, f.split("/")[1]] for f in files]))
    for name in ("m.csv", "m.json", "pairs.json"):
        splits = ManifestSource(str(tmp_path), train=name, val_fraction=0.5, test_fraction=0).scan()
        assert splits.classes == ["a", "b"] and splits.counts() == {"train": 2, "val": 2, "test": 0}
    (tmp_path / "bad.csv").write_text("file,class\nx.png,a\n")
    with pytest.raises(DataError, match="lacks a path or label column"):
        ManifestSource(str(tmp_path), train="bad.csv").scan()
    (tmp_path / "t.csv").write_text(f"path,label\n{files[0]},zebra\n")
    with pytest.raises(DataError, match=r"labels \['zebra'\] that are not among the classes"):
        ManifestSource(str(tmp_path), train="m.csv", test="t.csv").scan()


def fake_cifar10(root: Path, per_batch: int = 4) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for name in names:
        labels = [i % 10 for i in range(per_batch * 10)]
        data = np.stack([np.asarray(draw(label % 3, rng, 32)).transpose(2, 0, 1).reshape(-1) for label in labels])
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]},
            f,
        )


@pytest.mark.slow
def test_cifar10_through_torchvision_becomes_class_folders(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets.cifar as cifar

    # our small files are not the real ones: skip torchvision's MD5 checks
    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    fake_cifar10(tmp_path / "cifar")
    ckpt, metrics = train_and_test(tmp_path, "cifar10", tmp_path / "cifar", "dataset.image_size=32")
    assert ckpt["class_names"] == sorted(
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    )
    assert split_counts(tmp_path) == {"train": 180, "val": 20, "test": 40}
    assert (tmp_path / "cifar" / "imgclf_folders" / "test" / "cat").is_dir()


def test_torchvision_dataset_missing_offline_names_the_folder(tmp_path: Path) -> None:
    args = tiny_overrides(tmp_path, tmp_path / "none", "dataset=cifar10")
    with pytest.raises(DataError, match=rf"CIFAR10 is not in {tmp_path / 'none'}.*dataset.download=true"):
        tasks.train(
            compose_cfg(
                "train", [a for a in args if not a.startswith("dataset.root")] + [f"dataset.root={tmp_path / 'none'}"]
            )
        )


def test_image_folder_needs_a_root_and_trains_on_an_unseen_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no value for dataset.root"):
        check_config(compose_cfg("train", ["experiment=x", "dataset=image_folder"]))
    root = tmp_path / "unseen"
    rng = np.random.default_rng(5)
    for kind, name in enumerate(("cats", "dogs")):
        (root / name).mkdir(parents=True)
        for i in range(8):
            size = (int(rng.integers(20, 90)), int(rng.integers(20, 90)))  # mixed sizes
            img = draw(kind, rng, 40).resize(size)
            ext = ("jpeg", "png", "gif", "JPG")[i % 4]
            img.save(root / name / f"{i}.{ext}")
    ckpt, metrics = train_and_test(tmp_path, "image_folder", root, "dataset.image_size=16")
    assert split_counts(tmp_path) == {"train": 12, "val": 2, "test": 2}
    assert ckpt["class_names"] == ["cats", "dogs"] and metrics["samples"] == 2


SHARED = {"plates": (40, 2), "flowers5": (4317, 5), "food101_mini": (600, 10)}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_datasets_scan_as_documented(name: str) -> None:
    if not (SHARED_DATA / name).is_dir():
        pytest.skip(f"../shared/data/{name} is not beside the checkout")
    cfg = compose_cfg("train", ["experiment=x", f"dataset={name}"])
    root = (SHARED_DATA / name).resolve()
    source = FolderSource(
        str(root),
        val_fraction=cfg.dataset.val_fraction,
        test_fraction=cfg.dataset.test_fraction,
        split_seed=cfg.dataset.split_seed,
    )
    splits = source.scan()
    total, classes = SHARED[name]
    assert sum(splits.counts().values()) == total and len(splits.classes) == classes
    assert all(splits.counts()[s] > 0 for s in ("train", "val", "test"))


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "food101_mini").is_dir(), reason="../shared/data is not beside the checkout")
def test_food101_mini_trains_with_a_one_line_override(tmp_path: Path) -> None:
    ckpt, metrics = train_and_test(
        tmp_path, "food101_mini", (SHARED_DATA / "food101_mini").resolve(), "dataset.image_size=32"
    )
    assert len(ckpt["class_names"]) == 10 and metrics["samples"] == 150
