"""A user's own folder: a wrong dataset.root never trains on something else and creates nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from helpers import make_folder, run_cli


def _outputs(tmp_path: Path) -> list[str]:
    return [f"paths.experiments={tmp_path / 'experiments'}", f"paths.runs={tmp_path / 'runs'}",
            f"paths.cache={tmp_path / 'cache'}", "progress=false", "epochs=1"]


def _bad_root(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A dataset root of the given kind, and what the message must say it found."""
    root = tmp_path / "photos"
    if kind == "missing":
        (tmp_path / "phots").mkdir()  # the folder the user meant to type
        return root, "does not exist (the nearest existing folder"
    if kind == "file":
        root.write_bytes(b"not a folder")
        return root, "is a file of 12 bytes"
    root.mkdir()
    if kind == "empty":
        return root, "holds nothing (an empty folder)"
    for i in range(3):  # images straight in the root: no class
        Image.new("RGB", (8, 8)).save(root / f"{i}.png")
    return root, "3 file(s) (3 images): 0.png, 1.png, 2.png; images directly in the root have no class"


@pytest.mark.parametrize("kind", ["missing", "file", "empty", "images_without_classes"])
def test_a_bad_root_stops_with_what_was_found_and_creates_nothing(tmp_path: Path, kind: str) -> None:
    root, found = _bad_root(tmp_path, kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli("train.py", "dataset=image_folder", f"dataset.root={root}", *_outputs(tmp_path))
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in out
    assert str(root) in out and found in out
    assert "layouts that work" in out and "ROOT/train/<class>/<image>" in out
    assert "python train.py -cn=transfer dataset.root=" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no experiments/, runs/ or cache/


def test_the_quickstart_never_trains_on_another_folder(tmp_path: Path) -> None:
    photos = make_folder(tmp_path / "photos", {"train": 2})
    before = sorted(str(p) for p in photos.rglob("*"))
    result = run_cli("train.py", f"dataset.root={photos}", *_outputs(tmp_path))
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in out
    assert f"python train.py -cn=transfer dataset.root={photos}" in out
    assert f"python train.py -cn=scratch dataset.root={photos}" in out
    assert sorted(str(p) for p in photos.rglob("*")) == before  # no digits written into the user's folder
    assert not (tmp_path / "experiments").exists()


def test_a_mistyped_root_gets_no_digits_written_into_it(tmp_path: Path) -> None:
    typo = tmp_path / "my_photos"
    result = run_cli("train.py", f"dataset.root={typo}", *_outputs(tmp_path))
    assert result.returncode == 1 and "does not exist" in result.stdout + result.stderr
    assert not typo.exists()
