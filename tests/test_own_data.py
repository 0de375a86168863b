"""A user's own folder: a wrong dataset.root never trains on something else and creates nothing."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf
from PIL import Image

import imgclf.tasks as tasks
from helpers import compose_cfg, make_folder, read_csv, run_cli, tiny_overrides
from imgclf.experiment.checkpoint import load_checkpoint
from imgclf.experiment.resume import compare_configs
from imgclf.inference import Predictor
from imgclf.tasks import build, preprocess


def _outputs(tmp_path: Path) -> list[str]:
    return [
        f"paths.experiments={tmp_path / 'experiments'}",
        f"paths.runs={tmp_path / 'runs'}",
        f"paths.cache={tmp_path / 'cache'}",
        "progress=false",
        "epochs=1",
    ]


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
@pytest.mark.slow
def test_A12_a_bad_root_stops_with_what_was_found_and_creates_nothing(tmp_path: Path, kind: str) -> None:
    root, found = _bad_root(tmp_path, kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli("train.py", "dataset=image_folder", f"dataset.root={root}", *_outputs(tmp_path))
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in out
    assert str(root) in out and found in out
    assert "layouts that work" in out and "ROOT/train/<class>/<image>" in out
    assert "python train.py -cn=transfer dataset.root=" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no experiments/, runs/ or cache/


@pytest.mark.parametrize("kind", ["missing", "images_without_classes"])
@pytest.mark.slow
def test_A12_a_relative_root_is_named_by_its_absolute_path_from_the_project(tmp_path: Path, kind: str) -> None:
    import os
    import re

    from helpers import ROOT

    root, found = _bad_root(tmp_path, kind)
    relative = os.path.relpath(root, ROOT)  # as a user types it from the project folder: ../../tmp/.../photos
    elsewhere = tmp_path / "elsewhere"  # run from another folder: the root is still read from the project
    elsewhere.mkdir()
    result = run_cli("train.py", "dataset=image_folder", f"dataset.root={relative}", *_outputs(tmp_path), cwd=elsewhere)
    out = result.stdout + result.stderr
    assert not Path(relative).is_absolute() and result.returncode == 1 and "Traceback" not in out
    assert re.search(rf"(^|\s){re.escape(str(root))}\s", out, re.M) and found in out  # absolute: not ../../tmp/...
    assert str((elsewhere / relative).resolve()) not in out  # nor resolved from the folder it was run in
    assert "layouts that work" in out and "ROOT/<class>/<image>" in out and "ROOT/train/<class>/<image>" in out


@pytest.mark.slow
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


@pytest.mark.slow
def test_A12_a_mistyped_root_gets_no_digits_written_into_it(tmp_path: Path) -> None:
    typo = tmp_path / "my_photos"
    result = run_cli("train.py", f"dataset.root={typo}", *_outputs(tmp_path))
    assert result.returncode == 1 and "does not exist" in result.stdout + result.stderr
    assert not typo.exists()


# --- sizes from the data -------------------------------------------------------------------------


def _choose(
    setting: int | str,
    sizes: list[tuple[int, int]],
    native: int | None = None,
    resize: str = "keep_aspect",
    max_size: int = 128,
    native_scale: float = 1.0,
) -> preprocess.SizeChoice:
    return preprocess.image_size(
        setting, sizes, native=native, max_size=max_size, resize=resize, crop_fraction=0.875, native_scale=native_scale
    )


def test_auto_takes_small_images_at_their_own_size_from_scratch() -> None:
    choice = _choose("auto", [(32, 32)] * 9 + [(500, 400)])
    assert (choice.image_size, choice.decode_size) == (32, 32)  # no margin to crop: never enlarged
    assert "median shorter side is 32 px" in choice.reason


def test_auto_gives_a_pretrained_model_its_native_size_for_large_photos() -> None:
    choice = _choose("auto", [(640, 480), (512, 384), (1024, 768)], native=224)
    assert (choice.image_size, choice.decode_size) == (224, 256)  # resize 256, centre crop 224
    assert "native input size is 224 px" in choice.reason
    assert _choose("auto", [(640, 480)], native=224, resize="squash").decode_size == 224


def test_auto_never_enlarges_beyond_what_the_model_needs() -> None:
    assert _choose("auto", [(128, 128)] * 5, native=224).image_size == 128  # stored at 128: kept at 128
    assert _choose("auto", [(32, 32)] * 5, native=224).image_size == 112  # half the native size at least
    assert _choose("auto", [(300, 200)] * 5).image_size == 128  # capped by max_image_size
    assert _choose("auto", [(300, 203)] * 5, max_size=512).image_size == 200  # a multiple of 8


def test_native_scale_lets_a_pretrained_model_see_photos_above_its_native_size() -> None:
    photos = [(512, 384)] * 5
    assert _choose("auto", photos, native=260, native_scale=1.5).image_size == 384  # 1.5 x 260 = 390 -> 384
    assert _choose("auto", [(256, 256)] * 5, native=260, native_scale=1.5).image_size == 384  # enlarged 1.5x
    assert _choose("auto", [(128, 128)] * 5, native=260, native_scale=1.5).image_size == 192  # at most 1.5x
    assert _choose("auto", [(32, 32)] * 5, native=224, native_scale=1.5).image_size == 112  # half native at least
    choice = _choose("auto", [(128, 128)] * 5, native=260, native_scale=1.5)
    assert "enlarged 1.5x (dataset.native_scale)" in choice.reason
    assert _choose("auto", photos, native=260).image_size == 260  # scale 1: the native size, as before
    assert _choose("auto", photos, native_scale=1.5).image_size == 128  # from scratch: no effect


def test_an_explicit_size_that_enlarges_most_images_4x_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        choice = _choose(128, [(32, 32)] * 6 + [(256, 256)] * 4)
    assert choice.image_size == 128
    assert "enlarges 6 of 10 train images more than 2x" in caplog.text and "image_size=auto" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _choose(64, [(32, 32)] * 6)  # 2x: no warning
    assert "enlarges" not in caplog.text


def _own_cfg(tmp_path: Path, root: Path, *extra: str) -> DictConfig:
    args = [a for a in tiny_overrides(tmp_path, root) if not a.startswith(("dataset.image_size", "dataset.resize"))]
    return compose_cfg("train", [*args, "epochs=1", *extra])


def test_auto_size_is_recorded_in_the_saved_config_and_checkpoint(tmp_path: Path, caplog) -> None:
    root = make_folder(tmp_path / "small", {"train": 6, "test": 2}, shape=(32, 32))
    cfg = _own_cfg(tmp_path, root)
    assert cfg.dataset.image_size == "auto"
    with caplog.at_level(logging.INFO):
        tasks.train(cfg)
    exp = tmp_path / "experiments" / "tiny"
    assert OmegaConf.load(exp / "config.yaml").dataset.image_size == 32
    record = load_checkpoint(exp / "best.pt")["preprocessing"]
    assert (record["image_size"], record["decode_size"], record["resize"]) == (32, 32, "keep_aspect")
    assert "image size 32 px (the train images' median shorter side is 32 px" in caplog.text


def test_keep_aspect_crops_the_centre_and_test_and_predict_agree(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "wide", {"train": 6, "test": 3}, shape=(64, 48))
    cfg = _own_cfg(tmp_path, root, "dataset.max_image_size=32")
    tasks.train(cfg)
    exp = tmp_path / "experiments" / "tiny"
    record = load_checkpoint(exp / "best.pt")["preprocessing"]
    assert (record["image_size"], record["decode_size"]) == (32, 37)  # 32 / 0.875, shorter side 48: room for it
    tasks.test(_own_cfg(tmp_path, root, "dataset.max_image_size=32"))
    report = {Path(r["path"]).resolve(): r for r in read_csv(exp / "test" / "predictions.csv")}
    predictor = Predictor.load(exp / "best.pt", device="cpu")
    for path, row in report.items():
        image = predictor.load_image(path)
        with Image.open(path) as photo:  # centre square 48x48, resized to 37, centre 32 (nothing stretched)
            square = photo.convert("RGB").resize((37, 37), Image.Resampling.BILINEAR, box=(8, 0, 56, 48))
        expected = np.asarray(square)[2:34, 2:34]
        assert image.shape == (3, 32, 32)
        assert np.abs(image.permute(1, 2, 0).numpy().astype(int) - expected.astype(int)).max() <= 1
        probs = predictor.probabilities([image])[0]
        assert predictor.classes[int(probs.argmax())] == row["pred"]
        assert float(probs.max()) == pytest.approx(float(row["confidence"]), abs=1e-4)


@pytest.mark.parametrize(
    "overrides,native",
    [
        (["model=lite0"], 224),
        (["model=lite_ensemble"], 260),
        (["model=lite0", "model.pretrained=false"], None),
        (["model=torchvision", "model.arch=resnet50", "model.weights=DEFAULT"], 224),  # read without downloading
        (["model=torchvision", "model.weights=null"], None),
        (["model=small_cnn"], None),
    ],
)
def test_the_native_size_comes_from_the_model_before_it_is_built(overrides: list[str], native: int | None) -> None:
    assert build.native_size(compose_cfg("train", ["dataset=image_folder", "dataset.root=x", *overrides])) == native


LAYOUTS = {
    "class folders": {"": 8},
    "train only": {"train": 8},
    "train and test": {"train": 6, "test": 3},
    "train, val and test": {"train": 5, "val": 2, "test": 2},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("recipe", ["transfer", "scratch"])
@pytest.mark.slow
def test_the_own_folder_recipes_train_and_test_in_every_layout(tmp_path: Path, recipe: str, layout: str) -> None:
    root = make_folder(tmp_path / "photos", LAYOUTS[layout], classes=("cat", "dog"), shape=(40, 30))
    args = [a for a in tiny_overrides(tmp_path, root) if not a.startswith(("dataset", "epochs"))]
    overrides = [*args, f"dataset.root={root}", "epochs=1", "dataset.val_fraction=0.25", "dataset.test_fraction=0.25"]
    assert tasks.train(compose_cfg(recipe, overrides)) is not None
    metrics = tasks.test(compose_cfg(recipe, overrides))
    test_images = 2 * LAYOUTS[layout].get("test", 2)  # two classes; carved: a quarter of 8 per class
    assert metrics["samples"] == test_images
    saved = OmegaConf.load(tmp_path / "experiments" / "tiny" / "config.yaml")
    assert saved.dataset.image_size == (128 if recipe == "transfer" else 24)  # auto: half of 260 / the images' own


def test_D6_resuming_with_another_resize_mode_is_refused_and_old_configs_mean_squash() -> None:
    saved = {"dataset": {"image_size": 32, "root": "/photos"}}  # written before dataset.resize existed
    refused, _ = compare_configs(saved, {"dataset": {"image_size": 32, "root": "/photos", "resize": "keep_aspect"}})
    assert refused == ["dataset.resize: 'squash' -> 'keep_aspect'"]
    assert compare_configs(saved, {"dataset": {"image_size": 32, "root": "/photos", "resize": "squash"}})[0] == []
