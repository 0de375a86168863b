"""The decoded-image cache: equal to the uncached path, invalidated by changes, and the
bad-file policy, leakage and changed-file checks built on its report."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgclf.tasks as tasks
from helpers import StopAfter, compose_cfg, make_folder, tiny_overrides
from imgclf.data.cache import DecodeCache, decode
from imgclf.data.doctor import same_bytes
from imgclf.data.folder import FolderSource
from imgclf.data.prepare import load_splits
from imgclf.errors import DataError
from imgclf.training.state import Interrupted


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "data", {"train": 6, "val": 2, "test": 2})


def splits_of(root: Path):
    return FolderSource(str(root)).scan()


@pytest.mark.parametrize("mode", ["disk", "memory"])
def test_cached_images_equal_the_uncached_path(tmp_path: Path, folder: Path, mode: str) -> None:
    paths = [p for p, _ in splits_of(folder).samples["train"]]
    images, report = DecodeCache(tmp_path / "cache", mode=mode).load(paths, 16)
    assert images.shape == (len(paths), 16, 16, 3) and images.dtype == torch.uint8
    for i, path in enumerate(paths):
        assert np.array_equal(images[i].numpy(), decode(path, 16))
    assert not report.errors and all(d and len(d) == 40 for d in report.digests)
    assert report.sizes[0] == [24, 24]


def test_disk_cache_is_reused_and_invalidated_by_changed_files(tmp_path: Path, folder: Path) -> None:
    cache = DecodeCache(tmp_path / "cache", mode="disk")
    paths = [p for p, _ in splits_of(folder).samples["train"]]
    first, _ = cache.load(paths, 16)
    arrays = list((tmp_path / "cache").rglob("images-16px*.npy"))
    assert len(arrays) == 1
    stamp = arrays[0].stat().st_mtime_ns
    again, _ = cache.load(paths, 16)
    assert torch.equal(first, again) and arrays[0].stat().st_mtime_ns == stamp  # read, not rebuilt

    Image.new("RGB", (24, 24), (0, 255, 0)).save(paths[0])  # the file changes
    changed, report = cache.load(paths, 16)
    assert not torch.equal(changed[0], first[0]) and torch.equal(changed[1:], first[1:])
    assert np.array_equal(changed[0].numpy(), decode(paths[0], 16))
    assert len(list((tmp_path / "cache").rglob("images-16px*.npy"))) == 2  # a new key

    other_size, _ = cache.load(paths, 8)
    assert other_size.shape[1:] == (8, 8, 3)


def test_none_mode_keeps_no_images_but_checks_the_files(tmp_path: Path, folder: Path) -> None:
    paths = [p for p, _ in splits_of(folder).samples["train"]]
    Path(paths[1]).write_bytes(b"broken")
    images, report = DecodeCache(tmp_path / "cache", mode="none").load(paths, 16)
    assert images is None and list(report.errors) == [1]


def write_bad_files(root: Path) -> dict[str, str]:
    """Every kind of unusable file, in train/circle; returns {file name: expected words}."""
    folder = root / "train" / "circle"
    good = next(folder.glob("*.jpg")).read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("hello, I am not a JPEG")
    Image.new("RGB", (400, 2)).save(folder / "strip.png")
    Image.new("RGB", (1, 1)).save(folder / "pixel.png")
    return {
        "truncated.jpg": "cannot be read",
        "empty.jpg": "cannot be read",
        "text.jpg": "cannot be read",
        "strip.png": "aspect ratio",
        "pixel.png": "too small",
    }


def test_A2_A9_stop_policy_lists_every_bad_file_before_training(tmp_path: Path, folder: Path) -> None:
    expected = write_bad_files(folder)
    with pytest.raises(DataError) as info:
        load_splits(splits_of(folder), DecodeCache(None, "memory"), 16, names=("train", "val"))
    message = str(info.value)
    assert message.startswith("5 file(s) cannot be used")
    for name, words in expected.items():
        line = next(line for line in message.splitlines() if name in line)
        assert words in line, line
    assert "dataset.bad_files=skip" in message


def test_A2_skip_policy_trains_without_bad_files_and_says_so(tmp_path: Path, folder: Path, caplog) -> None:
    write_bad_files(folder)
    loaded = load_splits(splits_of(folder), DecodeCache(None, "memory"), 16, names=("train", "val"), bad_files="skip")
    assert len(loaded["train"].samples) == 18 and "skipping 5 unusable file(s)" in caplog.text
    dataset = loaded["train"].dataset(16, None)
    for i in range(len(dataset)):  # every served row is a good image with its own label
        image, label = dataset[i]
        path, expected_label = loaded["train"].samples[i]
        assert torch.equal(image, torch.from_numpy(decode(path, 16)).permute(2, 0, 1))
        assert int(label) == expected_label


def test_A5_a_class_left_without_images_stops(tmp_path: Path, folder: Path) -> None:
    for f in (folder / "train" / "square").iterdir():
        f.write_bytes(b"")
    with pytest.raises(DataError, match=r"no usable training images left for class\(es\) \['square'\]"):
        load_splits(splits_of(folder), DecodeCache(None, "memory"), 16, names=("train",), bad_files="skip")


def test_A13_the_same_image_in_two_splits_is_found(tmp_path: Path, folder: Path, caplog) -> None:
    leaked = next((folder / "train" / "circle").glob("*.png"))
    shutil.copy(leaked, folder / "test" / "circle" / "copy.png")
    loaded = load_splits(splits_of(folder), DecodeCache(None, "memory"), 16, names=("train", "val", "test"))
    _, found = same_bytes({name: split.report for name, split in loaded.items()})
    assert len(found) == 1 and {p.split(":", 1)[0] for p in found[0]} == {"train", "test"}
    cfg = compose_cfg("train", tiny_overrides(tmp_path, folder, "epochs=1"))
    tasks.train(cfg)
    assert "appear in more than one split" in caplog.text and "copy.png" in caplog.text


@pytest.mark.slow
def test_A13_resume_refuses_and_test_warns_when_files_changed(tmp_path: Path, folder: Path, caplog) -> None:
    cfg = compose_cfg("train", tiny_overrides(tmp_path, folder, "epochs=2"))
    with pytest.raises(Interrupted):
        tasks.train(cfg, stop_signal=lambda: StopAfter(1))
    victim = next((folder / "train" / "square").glob("*.png"))
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(victim)
    with pytest.raises(DataError, match=rf"changed since.*{victim.name}.*resuming would train on different data"):
        tasks.train(compose_cfg("train", tiny_overrides(tmp_path, folder, "epochs=2")))
    tasks.train(compose_cfg("train", tiny_overrides(tmp_path, folder, "epochs=1", "overwrite=true")))
    os.utime(victim)  # touched again after the splits were written: content is what counts
    tasks.test(compose_cfg("train", tiny_overrides(tmp_path, folder, "epochs=1")))
    assert "changed since" not in caplog.text
    Image.fromarray(np.full((24, 24, 3), 255, np.uint8)).save(next((folder / "test" / "circle").glob("*.png")))
    tasks.test(compose_cfg("train", tiny_overrides(tmp_path, folder, "epochs=1")))
    assert "changed since this experiment's splits.csv" in caplog.text


@pytest.mark.slow
def test_test_py_evaluates_val_plainly_when_there_is_no_test_split(tmp_path: Path, caplog) -> None:
    folder = make_folder(tmp_path / "tv", {"train": 8, "val": 3})
    args = tiny_overrides(tmp_path, folder, "epochs=1", "dataset.test_fraction=0")
    tasks.train(compose_cfg("train", args))
    metrics = tasks.test(compose_cfg("train", args))
    assert metrics["split"] == "val" and metrics["samples"] == 9
    assert "no test split" in caplog.text and "evaluating the val split instead" in caplog.text
    assert (tmp_path / "experiments" / "tiny" / "test_val" / "metrics.json").exists()


def test_cached_and_uncached_datasets_serve_the_same_augmented_images(tmp_path: Path, folder: Path) -> None:
    from torchvision.transforms import v2

    from imgclf.data.dataset import DecodedImages, LazyImages

    samples = splits_of(folder).samples["train"]
    paths, labels = [p for p, _ in samples], [label for _, label in samples]
    augment = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomRotation(10), v2.ColorJitter(0.2, 0.2, 0.2, 0.05)])
    images, _ = DecodeCache(tmp_path / "cache", mode="disk").load(paths, 16)
    cached, lazy = DecodedImages(images, labels, augment), LazyImages(paths, labels, 16, augment)
    for i in range(len(paths)):
        torch.manual_seed(i)
        a = cached[i]
        torch.manual_seed(i)
        b = lazy[i]
        assert torch.equal(a[0], b[0]) and a[0].shape == (3, 16, 16) and int(a[1]) == int(b[1])


# --- G1 / C3: the disk cache checks itself on every load and is rebuilt when damaged ---------------------


def built_cache(tmp_path: Path, folder: Path, caplog) -> tuple[DecodeCache, list[str], Path]:
    """A disk cache of the train split, built once: (cache, paths, its .npy file)."""
    cache = DecodeCache(tmp_path / "cache", mode="disk")
    paths = [p for p, _ in splits_of(folder).samples["train"]]
    cache.load(paths, 16)
    (array,) = (tmp_path / "cache").rglob("images-16px*.npy")
    caplog.clear()
    return cache, paths, array


def assert_rebuilt(cache: DecodeCache, paths: list[str], array: Path, caplog, *words: str) -> None:
    """The next load serves the uncached decode, warns naming the file, and the rebuilt file is trusted."""
    images, _ = cache.load(paths, 16)
    for i, path in enumerate(paths):
        assert np.array_equal(images[i].numpy(), decode(path, 16)), i
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(array) in w and "rebuilding" in w and all(x in w for x in words) for w in warnings), warnings
    caplog.clear()
    again, _ = cache.load(paths, 16)
    assert torch.equal(again, images) and not [r for r in caplog.records if r.levelname == "WARNING"]
    assert not [p for p in array.parent.iterdir() if "tmp" in p.name]


def test_G1_a_zeroed_cache_file_is_rebuilt_with_a_warning(tmp_path: Path, folder: Path, caplog) -> None:
    cache, paths, array = built_cache(tmp_path, folder, caplog)
    pixels = len(paths) * 16 * 16 * 3
    with open(array, "r+b") as f:  # blocks lost in a crash read back as zeros; the .npy header survives
        f.seek(array.stat().st_size - pixels)
        f.write(bytes(pixels))
    assert_rebuilt(cache, paths, array, caplog, "checksum")
    assert (array.stat().st_mode & 0o777) == 0o644  # C5: not mkstemp's 0600


def test_G1_a_truncated_cache_file_is_rebuilt_with_a_warning(tmp_path: Path, folder: Path, caplog) -> None:
    cache, paths, array = built_cache(tmp_path, folder, caplog)
    os.truncate(array, array.stat().st_size // 2)
    assert_rebuilt(cache, paths, array, caplog, "bytes")


def test_G1_a_cache_file_without_its_integrity_record_is_rebuilt(tmp_path: Path, folder: Path, caplog) -> None:
    cache, paths, array = built_cache(tmp_path, folder, caplog)
    (record,) = [p for p in array.parent.iterdir() if p.name.startswith(array.stem) and p != array]
    record.unlink()  # as an older imgclf, or a build killed between the array and its record, leaves it
    assert_rebuilt(cache, paths, array, caplog, "integrity record")


def tear_report(text: str, how: str) -> str:
    import json

    raw = json.loads(text)
    if how == "torn":
        return text[: len(text) // 2]
    if how == "garbage":
        return "[1, 2, 3]"
    raw[how] = raw[how][:-1]  # still valid JSON, but one entry short
    return json.dumps(raw)


@pytest.mark.parametrize("how", ["torn", "garbage", "paths", "digests"])
@pytest.mark.parametrize("mode", ["disk", "memory"])
def test_G1_a_torn_report_is_rebuilt_with_a_warning(tmp_path: Path, folder: Path, caplog, how: str, mode: str) -> None:
    cache = DecodeCache(tmp_path / "cache", mode=mode)
    paths = [p for p, _ in splits_of(folder).samples["train"]]
    _, first = cache.load(paths, 16)
    (report_file,) = (tmp_path / "cache").rglob("report.json")
    report_file.write_text(tear_report(report_file.read_text(), how))
    caplog.clear()
    images, report = cache.load(paths, 16)
    assert report == first and len(report.digests) == len(paths)
    assert torch.equal(images, torch.from_numpy(np.stack([decode(p, 16) for p in paths])))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(report_file) in w and "re-scanning" in w for w in warnings), warnings
    caplog.clear()
    assert cache.load(paths, 16)[1] == first and not caplog.records  # the rewritten report is trusted


DISK_FULL_SCRIPT = """
import resource, signal, sys
from imgclf.data.cache import DecodeCache
from imgclf.errors import DataError
paths, cache_dir = sys.argv[2:], sys.argv[1]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so the write fails with EFBIG, as a full disk fails with ENOSPC
resource.setrlimit(resource.RLIMIT_FSIZE, (32_000, 32_000))
try:
    DecodeCache(cache_dir, mode="disk", progress=False).load(paths, 64)
except DataError as exc:
    print(exc)
    sys.exit(3)
"""


def test_C3_disk_full_while_building_the_cache_is_a_clear_error_and_leaves_no_temp_file(
    tmp_path: Path, folder: Path
) -> None:
    import subprocess
    import sys

    paths = [p for p, _ in splits_of(folder).samples["train"]]  # 18 x 64 x 64 x 3 = 221 kB > the 32 kB limit
    cache_dir = tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, "-c", DISK_FULL_SCRIPT, str(cache_dir), *paths], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3, done.stdout + done.stderr
    message = done.stdout
    assert "Traceback" not in done.stderr and str(cache_dir) in message
    assert re.search(r"221\.3 kB needed, [\d.]+ [kMGT]?B free", message), message  # 128 header bytes + pixels
    assert "loader.cache=memory" in message and "Free some space" in message, message
    assert not [p for p in cache_dir.rglob("*") if "tmp" in p.name]
