"""Every recipe composes and trains one short epoch on generated data of its dataset's layout."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import imgclf.tasks as tasks
from helpers import CONF, compose_cfg, draw, make_folder, tiny_overrides

RECIPES = sorted(p.stem for p in CONF.glob("*.yaml") if p.stem not in ("train", "quickstart"))


def dataset_option(recipe: str) -> str:
    """The name of the dataset option a recipe selects (e.g. dishes)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=recipe, overrides=["experiment=x"], return_hydra_config=True)
    return cfg.hydra.runtime.choices["dataset"]


def write_cifar(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        labels = [i % 10 for i in range(20)]
        data = np.stack([np.asarray(draw(i % 3, rng, 32)).transpose(2, 0, 1).reshape(-1) for i in labels])
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return root


def layout_for(dataset: str, root: Path) -> Path:
    """Generated data in the layout ``conf/dataset/<dataset>.yaml`` expects."""
    if dataset in ("dishes", "food11", "food101_mini"):
        return make_folder(root, {"train": 8, "test": 8}, classes=("a", "b"))
    if dataset == "flowers102_folders":
        make_folder(root, {"train": 6, "valid": 2, "test": 2}, classes=("1", "2"))
        (root / "cat_to_name.json").write_text(json.dumps({"1": "pink primrose", "2": "hard-leaved orchid"}))
        return root
    if dataset == "quality":
        make_folder(root, {"imgs": 8}, classes=("bad", "good"))
        rows = [
            {"path": str(f.relative_to(root)), "label": f.parent.name} for f in sorted((root / "imgs").rglob("*.*"))
        ]
        (root / "train.json").write_text(json.dumps(rows[::2] + rows[1::4]))
        (root / "test.json").write_text(json.dumps(rows[3::4]))
        return root
    if dataset == "cifar10":
        return write_cifar(root)
    return make_folder(root, {"train": 10}, classes=("a", "b"))  # plates (train only), flowers5 (flat)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.slow
def test_recipe_trains_one_epoch_on_data_of_its_layout(recipe: str, tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)  # generated, not the real files
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    root = layout_for(dataset_option(recipe), tmp_path / "data")
    cfg = compose_cfg(recipe, ["experiment=x"])
    extra = [
        f"dataset.root={root}",
        "dataset.image_size=32",
        "dataset.num_classes=null",
        "epochs=1",
        "loader.batch_size=4",
    ]
    if cfg.model._target_.endswith("TorchvisionNet"):
        extra += ["model.weights=null", "model.hidden=[16]"]  # tests never download; small VGG head
    args = [a for a in tiny_overrides(tmp_path, root) if not a.startswith(("dataset", "epochs", "loader"))]
    cfg = compose_cfg(recipe, [*args, *extra])
    assert tasks.train(cfg) is not None
    assert (tmp_path / "experiments" / "tiny" / "best.pt").exists()
    assert tasks.test(cfg)["samples"] > 0


@pytest.mark.parametrize(
    ("recipe", "option"),
    [("scratch", o) for o in ("tinyvgg", "timm", "small_resnet", "lite0")]
    + [("transfer", "timm"), ("transfer", "lite0")],
)
def test_the_recipes_for_any_folder_take_any_model_option_as_it_is(recipe: str, option: str, tmp_path: Path) -> None:
    """`-cn=scratch model=timm` (as the README offers): scratch sets no key inside the `model` group, so another
    option is built from its own file alone; transfer sets only keys its pretrained options have (freeze, head)."""
    cfg = compose_cfg(recipe, ["dataset.root=/nowhere", f"model={option}", "dataset.num_classes=3"])
    own = compose_cfg("train", [f"model={option}", "dataset.num_classes=3"])
    assert set(cfg.model) == set(own.model)
