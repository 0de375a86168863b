"""K-fold cross-validation (dataset.folds / dataset.fold) and reviewed lists (dataset.exclude / dataset.relabel):
the splits they make, what splits.csv and the checkpoint record, and the inputs they refuse."""

from __future__ import annotations

import csv
import itertools
import logging
import os
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

import imgclf.data.walk as walk
import imgclf.tasks as tasks
from helpers import CLASSES, compose_cfg, make_folder, read_csv, run_cli, tiny_overrides
from imgclf.data.folder import FolderSource
from imgclf.data.folds import fold_plan
from imgclf.data.splits_file import read_splits, write_splits
from imgclf.errors import ConfigError, DataError
from imgclf.experiment.checkpoint import load_checkpoint
from imgclf.experiment.resume import compare_configs, data_change
from imgclf.tasks.config_check import check_config
from imgclf.tasks.test_task import warn_if_split_differently

PER_CLASS = 7


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/<class>/``, 3 classes of 7 images."""
    return make_folder(tmp_path_factory.mktemp("flat"), {"": PER_CLASS})


def every_image(root: Path) -> set[str]:
    return {os.path.realpath(p) for p in root.rglob("*") if p.is_file()}


def scan(root: Path, **kwargs: object) -> object:
    source = FolderSource(str(root), **kwargs)
    return source.review(source.scan())


def test_folds_partition_the_images_once_each_stratified(flat: Path) -> None:
    folds = 5
    runs = [scan(flat, folds=folds, fold=i, split_seed=3) for i in range(folds)]
    tests = [{p for p, _ in run.samples["test"]} for run in runs]
    assert set().union(*tests) == every_image(flat)  # every image is tested once ...
    assert not any(a & b for a, b in itertools.combinations(tests, 2))  # ... and only once
    for i, run in enumerate(runs):
        per_class = Counter(label for _, label in run.samples["test"])
        assert all(PER_CLASS // folds <= per_class[c] <= -(-PER_CLASS // folds) for c in range(len(CLASSES)))
        used = [{p for p, _ in run.samples[s]} for s in ("train", "val", "test")]
        assert not any(a & b for a, b in itertools.combinations(used, 2))
        assert set().union(*used) == every_image(flat)
        assert run.folds == runs[0].folds  # one plan for every fold's run, recorded in each
        assert tests[i] == {p for p, f in run.folds.items() if f == i}
        assert run.samples["val"]  # val carved from the other folds


def test_fold_plan_is_the_same_however_the_files_are_listed(
    flat: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = scan(flat, folds=4, fold=0, split_seed=1)
    samples = [s for items in first.samples.values() for s in items]
    shuffled = samples[:]
    random.Random(0).shuffle(shuffled)
    assert fold_plan(shuffled, 4, 1) == fold_plan(samples, 4, 1) == first.folds
    assert fold_plan(samples, 4, 2) != first.folds  # the seed chooses the plan

    copy = shutil.copytree(flat, tmp_path / "elsewhere")
    listed = os.scandir
    monkeypatch.setattr(walk.os, "scandir", lambda path: _Reversed(listed(path)))  # the folder listed backwards
    second = scan(copy, folds=4, fold=0, split_seed=1)
    relative = {os.path.relpath(p, flat): f for p, f in first.folds.items()}
    assert {os.path.relpath(p, copy): f for p, f in second.folds.items()} == relative


class _Reversed:
    """``os.scandir``'s iterator, yielding its entries in reverse order."""

    def __init__(self, it: object) -> None:
        self.it = it

    def __enter__(self) -> _Reversed:
        self.entries = list(reversed(list(self.it.__enter__())))
        return self

    def __exit__(self, *exc: object) -> None:
        self.it.__exit__(*exc)

    def __iter__(self) -> object:
        return iter(self.entries)


def test_folds_of_a_split_folder_fold_train_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_folder(tmp_path, {"train": 6, "val": 2, "test": 3})
    with caplog.at_level(logging.WARNING):
        splits = scan(root, folds=3, fold=2)
    train_folder = every_image(root / "train")
    assert {p for p, _ in splits.samples["test"]} < train_folder  # the held-out fold comes from train/
    assert {p for p, _ in splits.samples["val"]} == every_image(root / "val")  # the val folder stays val
    assert set(splits.folds) == train_folder
    assert "test folder's 9 images are not used" in caplog.text
    with pytest.raises(ConfigError, match="dataset.val_from"):
        FolderSource(str(root), folds=3, fold=0, val_from="test")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["dataset.folds=1", "dataset.fold=0"], "dataset.folds=1"),
        (["dataset.folds=five", "dataset.fold=0"], "dataset.folds='five'"),
        (["dataset.fold=0"], "dataset.fold=0 was given without dataset.folds"),
        (["dataset.folds=5"], "dataset.folds=5 needs dataset.fold"),
        (["dataset.folds=5", "dataset.fold=5"], "dataset.fold=5: expected a whole number from 0 to 4"),
        (["dataset.folds=5", "dataset.fold=-1"], "dataset.fold=-1"),
    ],
)
def test_bad_fold_keys_are_refused_naming_the_key(tmp_path: Path, flat: Path, overrides: list[str], key: str) -> None:
    cfg = compose_cfg("train", tiny_overrides(tmp_path, flat, *overrides))
    with pytest.raises(ConfigError) as raised:
        check_config(cfg)
    assert key in str(raised.value)


def test_more_folds_than_images_or_a_single_image_class_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dataset.folds=8 is more than the images of the largest class \(7\)"):
        FolderSource(str(make_folder(tmp_path / "a", {"": PER_CLASS})), folds=8, fold=0).scan()
    root = make_folder(tmp_path / "b", {"": 3})
    for extra in list((root / "square").iterdir())[1:]:
        extra.unlink()
    scanned = FolderSource(str(root)).scan()
    samples = [s for items in scanned.samples.values() for s in items]
    (fold,) = {f for path, f in fold_plan(samples, 3, 0).items() if "/square/" in path}
    with pytest.raises(DataError, match=r"holds out the only image of class\(es\) 'square'"):
        FolderSource(str(root), folds=3, fold=fold).scan()


def test_a_val_split_too_small_in_the_other_folds_says_so(tmp_path: Path) -> None:
    splits = FolderSource(str(make_folder(tmp_path, {"": 6})), folds=2, fold=0).scan()
    assert not splits.samples["val"]
    assert "0.15 x 3 = 0.45, which rounds to 0" in splits.carving["val"]  # 3 per class left by the other fold, not 6
    assert "in the other folds" in splits.carving["val"]


def test_test_py_warns_when_a_checkpoint_held_out_another_fold(caplog: pytest.LogCaptureFixture) -> None:
    theirs = {"split_seed": 0, "val_fraction": 0.15, "test_fraction": 0.15, "val_from": "train", "folds": 5, "fold": 0}
    with caplog.at_level(logging.WARNING):
        warn_if_split_differently(theirs, {**theirs, "fold": 1}, Path("fold0/best.pt"))
    assert "dataset.fold: 0 (its run) vs 1" in caplog.text and "may have trained on images of this split" in caplog.text


def write_list(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_paths_not_in_the_folder_are_refused_naming_them(flat: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"x")
    bad = [f"circle/missing_{i}.png" for i in range(6)] + [str(outside)]
    good = [str(flat / "circle" / "img_000.jpg"), "square/img_001.png"]  # absolute inside the root, and relative
    listed = write_list(tmp_path / "exclude.csv", [{"path": p} for p in good + bad])
    with pytest.raises(DataError) as raised:
        scan(flat, exclude=str(listed))
    message = str(raised.value)
    assert "7 of the 9 path(s)" in message and "and 2 more" in message
    assert "'circle/missing_0.png' (line 4)" in message and "img_000" not in message
    assert "dataset.exclude" in message
    splits = scan(flat, exclude=str(write_list(tmp_path / "ok.csv", [{"path": p} for p in good])))
    assert {os.path.basename(p) for p, _ in splits.excluded} <= {"img_000.jpg", "img_001.png"}


def test_lists_name_images_of_linked_class_folders_either_way(tmp_path: Path) -> None:
    real = make_folder(tmp_path / "real", {"": 4})
    root = tmp_path / "root"
    root.mkdir()
    for name in CLASSES:
        (root / name).symlink_to(real / name, target_is_directory=True)
    listed = ["circle/img_000.jpg", str(real / "square" / "img_001.png")]  # through the link; the audit's real path
    splits = scan(root, test_fraction=0.0, exclude=str(write_list(tmp_path / "x.csv", [{"path": p} for p in listed])))
    assert sorted(p for p, _ in splits.excluded) == [str(real / "circle" / "img_000.jpg"), listed[1]]
    assert not {p for p, _ in splits.excluded} & {p for items in splits.samples.values() for p, _ in items}


def test_relabel_refuses_unknown_classes_and_reads_label_before_suggested(flat: Path, tmp_path: Path) -> None:
    unknown = write_list(tmp_path / "unknown.csv", [{"path": "circle/img_000.jpg", "label": "sqare"}])
    with pytest.raises(DataError, match=r"'sqare' is not a class \(did you mean 'square'\?\).*circle"):
        scan(flat, relabel=str(unknown))
    plain = scan(flat, test_fraction=0.0)
    train = [p for p, _ in plain.samples["train"]]
    first, second = (os.path.relpath(p, flat) for p in train[:2])
    rows = [
        {"path": first, "split": "train", "given": "circle", "suggested": "square", "label": "stripes"},
        {"path": second, "split": "train", "given": "circle", "suggested": "square", "label": ""},
    ]
    splits = scan(flat, test_fraction=0.0, relabel=str(write_list(tmp_path / "reviewed.csv", rows)))
    labels = dict(splits.samples["train"])
    assert CLASSES[labels[train[0]]] == "stripes"  # a reviewer's label wins over the suggestion
    assert CLASSES[labels[train[1]]] == "square"  # no label: the suggestion
    assert splits.given == {train[0]: 0, train[1]: 0}


def test_exclude_and_relabel_change_train_and_val_as_splits_csv_and_checkpoint_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_folder(tmp_path / "data", {"train": 8})
    plain = scan(root, val_fraction=0.25, test_fraction=0.25)
    train, val, test = (sorted(plain.samples[s]) for s in ("train", "val", "test"))
    excluded = [train[0][0], val[0][0], test[0][0]]  # the test image stays: test labels untouched
    relabelled = train[1][0]
    exclude = write_list(tmp_path / "label_issues.csv", [{"path": os.path.relpath(p, root)} for p in excluded])
    new = CLASSES[(train[1][1] + 1) % 3]
    relabel = write_list(tmp_path / "relabel.csv", [{"path": os.path.relpath(relabelled, root), "label": new}])
    lists = [f"dataset.exclude={exclude}", f"dataset.relabel={relabel}"]
    shape = ["dataset.val_fraction=0.25", "dataset.test_fraction=0.25", "epochs=1"]
    cfg = compose_cfg("train", tiny_overrides(tmp_path, root, *shape, *lists))
    with caplog.at_level(logging.INFO):
        tasks.train(cfg)
    assert f"left out 2 image(s) listed in {exclude} (train 1, val 1)" in caplog.text
    assert "1 listed image(s) are in the test split and are kept as they are" in caplog.text

    exp = Path(cfg.paths.experiments) / "tiny"
    rows = {row["path"]: row for row in read_csv(exp / "splits.csv")}
    assert [rows[p]["split"] for p in excluded] == ["excluded", "excluded", "test"]
    assert (rows[relabelled]["label"], rows[relabelled]["given"]) == (new, CLASSES[train[1][1]])
    assert {p for p, row in rows.items() if row["split"] == "test"} == {p for p, _ in test}  # the same test split
    saved, _ = read_splits(exp / "splits.csv", list(CLASSES))
    assert [p for p, _ in saved.excluded] == sorted(excluded[:2]) and saved.given == {relabelled: train[1][1]}
    dataset = load_checkpoint(exp / "best.pt")["config"]["dataset"]
    assert (dataset["exclude"], dataset["relabel"]) == (str(exclude), str(relabel))

    write_list(exclude, [{"path": os.path.relpath(excluded[0], root)}])  # the list edited, then resumed
    again = compose_cfg("train", tiny_overrides(tmp_path, root, *shape, *lists, "epochs=2"))
    with pytest.raises(DataError, match="reviewed lists differ.*dataset.exclude now leaves out 1 image"):
        tasks.train(again)


def test_old_splits_files_read_as_runs_without_folds_or_lists(flat: Path, tmp_path: Path) -> None:
    splits = scan(flat)
    old = tmp_path / "splits.csv"
    with open(old, "w", newline="") as f:  # the four columns of files written before folds and lists
        writer = csv.writer(f)
        writer.writerow(("path", "label", "split", "sha1"))
        writer.writerows((p, CLASSES[label], s, "") for s, items in splits.samples.items() for p, label in items)
    read, _ = read_splits(old, list(CLASSES))
    assert read.samples == splits.samples and not read.folds and not read.excluded and not read.given
    new = tmp_path / "new.csv"
    write_splits(scan(flat, folds=3, fold=1), new)
    assert len(read_splits(new, list(CLASSES))[0].folds) == PER_CLASS * 3


def test_another_fold_is_refused_on_resume_and_is_other_data() -> None:
    saved = {"dataset": {"root": "/d", "folds": 5, "fold": 0, "exclude": None}}
    current = {"dataset": {"root": "/d", "folds": 5, "fold": 1, "exclude": None}}
    refused, _ = compare_configs(saved, current)
    assert refused == ["dataset.fold: 0 -> 1"]
    payload = {"config": saved, "class_names": ["a", "b"]}
    assert data_change(payload, "/d", ["a", "b"], Path("/"), current["dataset"]) == "dataset.fold: 0 -> 1"
    assert data_change(payload, "/d", ["a", "b"], Path("/"), saved["dataset"]) is None


@pytest.mark.slow
def test_train_py_on_a_fold_then_test_py_evaluates_that_fold(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"": 6})
    overrides = tiny_overrides(tmp_path, root, "epochs=1", "dataset.folds=3", "dataset.fold=2")
    trained = run_cli("train.py", *overrides)
    assert trained.returncode == 0, trained.stderr[-2000:]
    exp = tmp_path / "experiments" / "tiny"
    rows = read_csv(exp / "splits.csv")
    held = {row["path"] for row in rows if row["split"] == "test"}
    assert held == {row["path"] for row in rows if row["fold"] == "2"} and len(held) == 6
    assert {row["fold"] for row in rows} == {"0", "1", "2"}
    tested = run_cli("test.py", *overrides)
    assert tested.returncode == 0, tested.stderr[-2000:]
    assert {row["path"] for row in read_csv(exp / "test" / "predictions.csv")} == held


def test_another_fold_under_a_finished_folds_name_is_not_called_finished(tmp_path: Path) -> None:
    """A finished fold-0 run, then fold 1 under the same experiment name: refused as other data (naming the
    fold), never "already finished; nothing to do" (which would leave fold 1 untrained and its test missing)."""
    from imgclf.errors import ExperimentError

    root = make_folder(tmp_path / "data", {"": 6})
    tasks.train(compose_cfg("train", tiny_overrides(tmp_path, root, "epochs=1", "dataset.folds=3", "dataset.fold=0")))
    with pytest.raises(ExperimentError, match=r"dataset\.fold: 0 -> 1") as refused:
        tasks.train(
            compose_cfg("train", tiny_overrides(tmp_path, root, "epochs=1", "dataset.folds=3", "dataset.fold=1"))
        )
    assert "dataset.folds=3 dataset.fold=1 experiment=tiny_fold1" in str(refused.value)  # a command that does it
