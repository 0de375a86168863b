"""imgclf-doctor and the doctor's report, on a folder holding every kind of file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from zoo import BAD, GOOD, IGNORED, make_zoo

from helpers import ROOT, compose_cfg, make_folder, tiny_overrides
from imgclf.data.cache import DecodeCache, decode
from imgclf.data.doctor import diagnose
from imgclf.data.folder import FolderSource
from imgclf.data.prepare import load_splits
from imgclf.errors import DataError


def doctor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imgclf.cli.doctor", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_zoo(tmp_path_factory.mktemp("zoo"))


def source(root: Path) -> FolderSource:
    return FolderSource(str(root))


def test_A2_A3_report_names_every_bad_file_and_counts_skipped_ones(tmp_path: Path, zoo: Path) -> None:
    report = diagnose(source(zoo), DecodeCache(tmp_path / "cache", mode="none", progress=False))
    bad = {Path(b["path"]).name: b["reason"] for b in report["bad_files"]}
    assert set(bad) == set(BAD)
    for name, words in BAD.items():
        assert words in bad[name], (name, bad[name])
    assert report["classes"] == ["circle", "square"]  # tool folders are never classes
    assert report["counts"]["train"]["circle"] == 6 + len(GOOD) + len(BAD)
    assert report["usable"]["train"]["circle"] == 6 + len(GOOD)
    assert report["ignored_by_extension"] == {ext: list(IGNORED.values()).count(ext) for ext in set(IGNORED.values())}
    assert report["blocking"] == [f"{len(BAD)} unusable file(s) (dataset.bad_files=stop)"]
    sizes = report["image_sizes"]
    assert sizes["width"]["min"] == 20 and sizes["width"]["max"] == 32  # stored sizes, before resizing


def test_A11_A10_every_good_mode_decodes_to_rgb(zoo: Path) -> None:
    circle = zoo / "train" / "circle"
    for name in GOOD:
        image = decode(str(circle / name), 16)
        assert image.shape == (16, 16, 3) and image.dtype == np.uint8, name
    rotated = decode(str(circle / "rotated.jpg"), 32)  # 20 wide stored, 32 wide after EXIF rotation
    stretched = decode(str(circle / "upper.JPG"), 32)
    assert rotated.shape == stretched.shape  # the square working size hides orientation; check content:
    from PIL import Image

    from imgclf.data.images import load_image

    assert load_image(circle / "rotated.jpg").size == (32, 20)
    assert Image.open(circle / "rotated.jpg").size == (20, 32)


def test_A13_duplicates_and_leakage_are_reported(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", {"train": 4, "test": 2})
    first = next((root / "train" / "circle").glob("*.png"))
    shutil.copy(first, root / "train" / "circle" / "dup.png")
    shutil.copy(first, root / "test" / "square" / "leak.png")
    report = diagnose(source(root), DecodeCache(None, mode="none", progress=False))
    assert len(report["leakage"]) == 1 and len(report["leakage"][0]) == 3
    assert any("leak.png" in p for p in report["leakage"][0])
    assert report["duplicates"] == []  # the two train copies are part of the leaking group
    assert report["blocking"] == []


@pytest.mark.slow
def test_cli_on_a_folder_exits_1_when_blocked_and_writes_json(tmp_path: Path, zoo: Path) -> None:
    result = doctor(str(zoo), "--json", str(tmp_path / "r.json"), "--cache", str(tmp_path / "cache"))
    assert result.returncode == 1
    assert "BLOCKS TRAINING" in result.stdout and "unusable files: 6" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["bad_files"]) == len(BAD)
    skip = doctor(str(zoo), "--bad-files", "skip", "--cache", str(tmp_path / "cache"))
    assert skip.returncode == 0 and "ready to train" in skip.stdout


@pytest.mark.slow
def test_A12_cli_with_a_config_and_a_missing_folder(tmp_path: Path, tiny_folder: Path) -> None:
    ok = doctor("-cn", "train", f"dataset.root={tiny_folder}", f"paths.cache={tmp_path / 'c'}")
    assert ok.returncode == 0, ok.stderr
    assert "circle" in ok.stdout and "ready to train" in ok.stdout
    missing = doctor(str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and f"dataset folder not found: {tmp_path / 'nowhere'}" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_console_script_is_installed() -> None:
    script = shutil.which("imgclf-doctor")
    assert script is not None, "pip install -e . installs imgclf-doctor"
    assert subprocess.run([script, "--help"], capture_output=True, text=True).returncode == 0


def test_A2_training_on_the_zoo_stops_or_skips_by_policy(tmp_path: Path, zoo: Path) -> None:
    import imgclf.tasks as tasks

    with pytest.raises(DataError, match=f"{len(BAD)} file\\(s\\) cannot be used"):
        tasks.train(compose_cfg("train", tiny_overrides(tmp_path, zoo, "epochs=1")))
    cfg = compose_cfg("train", tiny_overrides(tmp_path, zoo, "epochs=1", "dataset.bad_files=skip"))
    tasks.train(cfg)
    report = json.loads((tmp_path / "experiments" / "tiny" / "doctor.json").read_text())
    assert len(report["bad_files"]) == len(BAD) and report["usable"]["train"]["circle"] == 6 + len(GOOD)
    loaded = load_splits(source(zoo).scan(), DecodeCache(None, "memory"), 16, names=("train",), bad_files="skip")
    assert len(loaded["train"].samples) == 12 + len(GOOD)
