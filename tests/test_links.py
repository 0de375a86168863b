"""Links, special files and class names in the folder scan (docs/reliability.md A3, A5, A7, G3, G4).

Every fault is made for real: os.symlink, a folder link back to its parent, os.mkfifo, an AF_UNIX
socket, class folders named in NFC and in NFD."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import threading
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from helpers import CLASSES, make_folder, run_cli, tiny_overrides
from imgclf.data.cache import file_key
from imgclf.data.folder import FolderSource, Splits, remap
from imgclf.errors import DataError

NFC, NFD = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
SCAN_TIMEOUT = 20.0  # a scan that opens a FIFO blocks forever: fail instead of hanging CI


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()``'s result, or a test failure when it has not returned after ``seconds`` (the thread
    is a daemon, so a call stuck in open() does not keep the test run alive)."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = call()
        except BaseException as exc:  # noqa: BLE001  handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"did not return within {seconds:.0f} s (a FIFO opened, or a link loop walked?)")
    if "error" in result:
        raise result["error"]
    return result["value"]


def scan(root: Path, **kw: Any) -> Splits:
    return within(SCAN_TIMEOUT, FolderSource(str(root), val_fraction=0, test_fraction=0, **kw).scan)


def train_paths(splits: Splits, name: str) -> list[str]:
    label = splits.classes.index(name)
    return [p for p, lab in splits.samples["train"] if lab == label]


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """data/train/{circle,square,stripes}/ with 4 images each."""
    return make_folder(tmp_path / "data", {"train": 4})


def test_A7_G3_folder_links_are_followed_and_a_loop_ends(
    tmp_path: Path, data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    circle = data / "train" / "circle"
    elsewhere = tmp_path / "more_circles"
    for i in range(16):
        image(elsewhere / f"extra_{i:02d}.png")
    (circle / "more").symlink_to(elsewhere, target_is_directory=True)
    (circle / "sub").mkdir()
    (circle / "sub" / "loop").symlink_to(circle, target_is_directory=True)  # a link to its parent's parent
    (circle / "again").symlink_to(circle / "more", target_is_directory=True)  # the same folder reached twice
    with caplog.at_level(logging.INFO, logger="imgclf.data.folder"):
        splits = scan(data)
    paths = train_paths(splits, "circle")
    assert len(paths) == len(set(paths)) == 4 + 16  # the linked folder's images are there, once each
    assert splits.ignored["folder link loop"] == 1 and splits.ignored["folder reached twice"] == 1
    assert f"folder link loop {circle / 'sub' / 'loop'} -> {circle}: not followed" in splits.skipped
    assert f"followed 1 folder link(s): {circle / 'again'} -> {circle / 'more'}" in caplog.text
    assert f"folder reached twice {circle / 'more'} -> {elsewhere}" in caplog.text  # named, with the count


def test_A7_a_link_to_a_sibling_in_the_same_class_is_kept_once(data: Path) -> None:
    circle = data / "train" / "circle"
    (circle / "copy.jpg").symlink_to(circle / "train_000.jpg")
    splits = scan(data)
    assert len(train_paths(splits, "circle")) == 4
    assert splits.skipped == [] and "file in two classes" not in splits.ignored


def test_G3_a_file_linked_into_two_classes_stops_naming_the_link_target_and_classes(data: Path) -> None:
    target = data / "train" / "square" / "train_000.jpg"
    link = data / "train" / "circle" / "x.jpg"
    link.symlink_to(target)
    with pytest.raises(DataError) as err:
        scan(data)
    message = str(err.value)
    assert f"{link} -> {target}" in message
    assert "'circle'" in message and "'square'" in message and "two labels" in message
    assert "remove one of the links" in message


def test_G3_two_links_in_two_classes_to_one_target_are_dropped_under_skip(
    tmp_path: Path, data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = image(tmp_path / "outside" / "t.png")
    (data / "train" / "circle" / "a.png").symlink_to(target)
    (data / "train" / "square" / "b.png").symlink_to(target)
    with pytest.raises(DataError, match=r"circle/a\.png -> .*t\.png"):
        scan(data)
    with caplog.at_level(logging.WARNING):
        splits = scan(data, bad_files="skip")
    assert str(target) not in [p for p, _ in splits.samples["train"]]  # under neither label
    assert splits.counts()["train"] == 12
    assert splits.ignored["file in two classes"] == 1
    assert "circle/a.png" in caplog.text and "square/b.png" in caplog.text


def test_G3_dangling_links_are_counted_named_and_never_reach_the_cache(
    tmp_path: Path, data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gone = tmp_path / "gone" / "x.jpg"
    link = data / "train" / "circle" / "x.jpg"
    link.symlink_to(gone)
    (data / "train" / "circle" / "album").symlink_to(tmp_path / "gone" / "album")  # a folder link, no extension
    itself = data / "train" / "circle" / "self.png"
    itself.symlink_to(itself)  # a link loop: ELOOP, not ENOENT
    with caplog.at_level(logging.WARNING):
        splits = scan(data)
    assert splits.ignored["dangling link"] == 3
    assert f"dangling link {link} -> {gone}" in splits.skipped
    assert f"dangling link {itself} -> {itself} (Too many levels of symbolic links)" in splits.skipped
    assert f"dangling link {link} -> {gone}" in caplog.text
    paths = [p for p, _ in splits.samples["train"]]
    assert len(paths) == 12 and not any(p.endswith("x.jpg") for p in paths)
    file_key(paths)  # the cache's key reads every file's stat: no "file list changed"


def test_G3_fifos_and_sockets_are_never_opened(data: Path) -> None:
    circle = data / "train" / "circle"
    os.mkfifo(circle / "pipe.jpg")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(circle / "sock.png"))
    try:
        splits = scan(data)
    finally:
        server.close()
    assert splits.ignored["special file (FIFO)"] == 1 and splits.ignored["special file (socket)"] == 1
    assert f"special file (FIFO) {circle / 'pipe.jpg'}" in splits.skipped
    assert len(train_paths(splits, "circle")) == 4


def test_A3_A5_a_class_of_unreadable_files_says_what_its_folder_held(data: Path) -> None:
    square = data / "train" / "square"
    for f in square.iterdir():
        f.unlink()
    for i in range(12):
        (square / f"IMG_{i}.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    (square / "notes.txt").write_text("x")
    with pytest.raises(DataError) as err:
        scan(data)
    message = str(err.value)
    assert "'square'" in message and "12 .heic files" in message and "1 .txt file" in message
    assert "convert them to JPEG" in message


def test_A5_an_empty_class_folder_is_called_empty(data: Path) -> None:
    for f in (data / "train" / "stripes").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"'stripes' \(an empty folder\)"):
        scan(data)


def make_cafe(root: Path, *spellings: tuple[str, str]) -> Path:
    """``root/<split>/<spelling>/`` with 3 images each, next to the usual shape classes in train/."""
    make_folder(root, {"train": 3})
    for split, name in spellings:
        for i in range(3):
            image(root / split / name / f"{i}.png")
    return root


def test_G4_train_class_folders_that_differ_only_in_normal_form_are_refused(tmp_path: Path) -> None:
    root = make_cafe(tmp_path / "data", ("train", NFC), ("train", NFD))
    assert sorted(os.listdir(root / "train")).count(NFC) == 1  # the file system keeps both spellings
    with pytest.raises(DataError) as err:
        scan(root)
    message = str(err.value)
    assert "Unicode normal form" in message and "rename" in message
    assert r"'cafe\u0301'" in message and r"'caf\u00e9'" in message


def test_G4_a_test_folder_in_the_other_normal_form_is_mapped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_cafe(tmp_path / "data", ("train", NFC), ("test", NFD))
    for name in CLASSES:
        image(root / "test" / name / "0.png")
    with caplog.at_level(logging.WARNING):
        splits = scan(root)
    assert splits.classes == sorted([*CLASSES, NFC])
    label = splits.classes.index(NFC)
    assert sum(lab == label for _, lab in splits.samples["test"]) == 3
    assert "Unicode normal form" in caplog.text and r"'cafe\u0301'" in caplog.text


def test_G4_checkpoint_and_configured_classes_match_folders_in_the_other_normal_form(tmp_path: Path) -> None:
    root = make_cafe(tmp_path / "data", ("train", NFD))
    configured = [NFC, *CLASSES]
    splits = scan(root, classes=configured)
    assert splits.classes == configured and len(train_paths(splits, NFC)) == 3
    folder_named = scan(root)
    mapped = remap(folder_named, [NFC, *CLASSES])  # a checkpoint trained where the name was NFC
    assert sorted(lab for _, lab in mapped.samples["train"]).count(0) == 3


def test_G4_a_test_folder_that_differs_only_by_case_is_named_with_the_reason(data: Path) -> None:
    make_folder(data, {"test": 1})
    (data / "test" / "circle").rename(data / "test" / "Circle")
    with pytest.raises(DataError, match=r"'Circle' differs from the train class 'circle' only by case"):
        scan(data)


def train_cli(tmp_path: Path, root: Path, timeout: float) -> subprocess.CompletedProcess:
    try:
        return run_cli("train.py", *tiny_overrides(tmp_path, root, "epochs=1"), timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"python train.py did not finish within {timeout:.0f} s (a FIFO opened?)")


@pytest.mark.slow
def test_G3_end_to_end_a_fifo_is_skipped_and_a_file_in_two_classes_stops_the_run(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"train": 6, "val": 2, "test": 2})
    os.mkfifo(root / "train" / "circle" / "pipe.jpg")
    finished = train_cli(tmp_path / "fifo", root, timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "special file (FIFO)" in finished.stdout + finished.stderr
    doctor = json.loads((tmp_path / "fifo" / "experiments" / "tiny" / "doctor.json").read_text())
    assert doctor["skipped"] == [f"special file (FIFO) {root / 'train' / 'circle' / 'pipe.jpg'}"]
    link = root / "train" / "square" / "x.jpg"
    link.symlink_to(root / "train" / "circle" / "train_000.jpg")
    stopped = train_cli(tmp_path / "two", root, timeout=120)
    said = stopped.stdout + stopped.stderr
    assert stopped.returncode == 1, said[-2000:]
    assert f"{link} -> " in said and "remove one of the links" in said
    assert "Traceback" not in said
