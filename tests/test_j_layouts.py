"""Issue 27, J2, J15 and J8 (fractions): split folders in any spelling, folders that cannot be classes, unused
top-level folders named, and the fractions that carve val and test explained or refused."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import imgclf.tasks as tasks
from helpers import CLASSES, compose_cfg, make_folder, tiny_overrides
from imgclf.cli import doctor as doctor_cli
from imgclf.data.cache import DecodeCache
from imgclf.data.doctor import diagnose, format_report
from imgclf.data.folder import FolderSource, remap
from imgclf.errors import ConfigError, DataError


def scan(root: Path, **kw):
    return FolderSource(str(root), **kw).scan()


def run_doctor(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = doctor_cli.main([str(root), "--cache", str(tmp_path / "doctor-cache")])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "train,val,test",
    [
        ("train", "val", "test"),
        ("Train", "Validation", "Test"),
        ("training", "valid", "testing"),
        ("TRAIN", "dev", "TEST"),
        ("Training", "Val", "Testing"),
        ("train", "VALIDATION", "test"),
        ("train", "Dev", "test"),
    ],
)
def test_J2_split_folders_are_recognised_in_every_spelling(tmp_path: Path, train: str, val: str, test: str) -> None:
    root = make_folder(tmp_path / "data", {train: 2, val: 1, test: 1})
    splits = scan(root, val_fraction=0, test_fraction=0)
    assert splits.classes == list(CLASSES)
    assert splits.counts() == {"train": 6, "val": 3, "test": 3}
    assert all(f"/{val}/" in p for p, _ in splits.samples["val"])
    assert splits.unused == []


def test_J2_kaggle_train_test_folders_are_splits_never_two_classes_and_the_doctor_agrees(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = make_folder(tmp_path / "kaggle", {"Train": 8, "Test": 2})
    splits = scan(root)
    assert splits.classes == list(CLASSES)  # not ["Test", "Train"] with the real classes flattened
    assert splits.counts()["test"] == 6 and all("/Test/" in p for p, _ in splits.samples["test"])
    assert splits.layout == "splits train/test (folders Train/, Test/)"
    code, out, _ = run_doctor(root, tmp_path, capsys)
    assert code == 0 and "ready to train" in out and "3 classes" in out
    assert "circle" in out and "Train " not in out


def test_J2_train_and_validation_reads_validation(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"train": 4, "Validation": 2})
    splits = scan(root)
    assert splits.counts()["val"] == 6 and all("/Validation/" in p for p, _ in splits.samples["val"])


def test_J2_a_folder_holding_only_folders_is_never_a_class(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_folder(tmp_path / "sets", {"Training_set": 3, "Test_set": 1})
    with pytest.raises(DataError) as err:
        scan(root)
    message = str(err.value)
    assert "hold only folders and no images" in message
    assert "'Training_set' (holds circle/, square/, stripes/)" in message and "'Test_set'" in message
    assert "if such a folder is a split, name it train/" in message and "set dataset.root to it" in message
    code, _, stderr = run_doctor(root, tmp_path, capsys)
    assert code == 1 and "hold only folders" in stderr  # never "ready to train"
    nested = tmp_path / "nested"
    make_folder(nested / "train" / "circle", {"2019": 2, "2020": 2}, classes=("x",))  # a class of folders, in a split
    make_folder(nested, {"train": 2}, classes=("square",))
    with pytest.raises(DataError, match=r"hold only folders and no images: 'circle' \(holds 2019/, 2020/\)") as err:
        scan(nested)
    assert "name it train/" not in str(err.value)  # inside a split: no split hint


def test_J2_two_spellings_of_one_split_are_refused_naming_both(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"train": 2, "val": 1, "Validation": 1})
    with pytest.raises(DataError, match=r"has Validation/ and val/, two spellings of the val split"):
        scan(root)


def test_J2_an_unused_top_level_folder_is_named_in_the_log_and_the_report(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_folder(tmp_path / "data", {"train": 4, "test": 2, "extras": 2})
    with caplog.at_level(logging.WARNING, logger="imgclf.data.folder"):
        splits = scan(root)
    assert splits.unused == ["extras/"]
    assert any("extras/ are not read" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert remap(splits, list(reversed(CLASSES))).unused == ["extras/"]  # kept on the way to doctor.json
    report = diagnose(FolderSource(str(root)), DecodeCache(None, mode="none", progress=False))
    assert report["unused_folders"] == ["extras/"]
    assert "top-level folders not read (no split name): 1\n  extras/" in format_report(report)


@pytest.mark.parametrize("name", ["test", "train", "Validation"])
def test_J2_a_flat_class_named_like_a_split_gets_a_message_saying_why(tmp_path: Path, name: str) -> None:
    root = make_folder(tmp_path / "flat", {"": 3}, classes=(name, "cat", "dog"))
    with pytest.raises(DataError) as err:
        scan(root)
    message = str(err.value)
    assert f"{root / name} holds images but no class folders" in message
    assert f"A top-level folder named '{name}' is read as the" in message and "like cat/, dog/" in message
    assert f"rename its folder (e.g. to '{name}_class'" in message


def test_J15_too_few_images_per_class_names_the_rounding(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "few", {"": 3})
    with pytest.raises(DataError) as err:
        tasks.train(compose_cfg("train", tiny_overrides(tmp_path, root, "epochs=1")))
    message = str(err.value)
    assert "dataset.val_fraction is 0" not in message
    assert "dataset.val_fraction=0.15 of 3 images per class: 0.15 x 3 = 0.45, which rounds to 0" in message
    assert "dataset.val_fraction >= 0.17" in message and "at least 4 images per class" in message
    report = diagnose(FolderSource(str(root)), DecodeCache(None, mode="none", progress=False))
    assert any("0.15 x 3 = 0.45, which rounds to 0" in reason for reason in report["blocking"])
    assert "dataset.test_fraction=0 to carve no test split" in report["carving"]["test"]


def test_J15_one_small_class_among_larger_ones_is_named_with_its_rounding(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_folder(tmp_path / "mixed", {"": 10}, classes=("big", "large"))
    make_folder(root, {"": 2}, classes=("tiny",))
    with caplog.at_level(logging.WARNING, logger="imgclf.data.folder"):
        splits = scan(root, val_fraction=0.2, test_fraction=0.2)
    assert splits.counts()["val"] == 4
    note = (
        "dataset.val_fraction=0.2 carves no val image from 1 of 3 classes: 'tiny' (2 images: 0.2 x 2 = 0.4, "
        "which rounds to 0)"
    )
    assert splits.carving["val"].startswith(note) and note in caplog.text


@pytest.mark.parametrize("val,test,total", [("0.5", "0.5", "1"), ("0.7", "0.6", "1.3")])
def test_J8_fractions_that_leave_no_train_image_are_refused_before_any_data_is_read(
    tmp_path: Path, val: str, test: str, total: str
) -> None:
    missing = tmp_path / "not_there"  # a scan would stop with "dataset folder not found"
    args = tiny_overrides(tmp_path, missing, f"dataset.val_fraction={val}", f"dataset.test_fraction={test}")
    expected = f"dataset.val_fraction={val} + dataset.test_fraction={test} = {total}"
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("+", r"\+")):
        tasks.train(compose_cfg("train", args))
    with pytest.raises(ConfigError, match="their sum must be below 1"):
        FolderSource(str(missing), val_fraction=float(val), test_fraction=float(test))  # the doctor's way in
