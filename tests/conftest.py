"""Shared fixtures: tiny image folders and one trained experiment per session (helpers in helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import DictConfig

import imgclf.tasks as tasks
from helpers import TRAINED_CAMS, compose_cfg, make_folder, tiny_overrides


@pytest.fixture(scope="session", autouse=True)
def _own_cache_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """predict and serve keep a checkpoint's backbone exported for onnxruntime in $XDG_CACHE_HOME/imgclf: the tests'
    go to a temporary folder, never the user's ~/.cache (subprocesses inherit it)."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache_home"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked slow (long end-to-end runs: sweeps, torchrun groups, kill loops) run in CI (CI=true, as
    .ci/run is run), with IMGCLF_SLOW=1, or when asked for with -m; elsewhere they are skipped, saying so, to
    keep `pytest` within a few minutes on 2 cores."""
    if os.environ.get("CI") or os.environ.get("IMGCLF_SLOW") or config.getoption("markexpr"):
        return
    skip = pytest.mark.skip(reason="slow: runs in CI; here with IMGCLF_SLOW=1 pytest (or pytest -m slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/val/test folders, 3 classes: 16 / 6 / 6 images per class."""
    return make_folder(tmp_path_factory.mktemp("tiny"), {"train": 16, "val": 6, "test": 6})


@pytest.fixture(scope="session")
def train_only_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only train/<class>/ (like ../shared/data/plates): val and test are carved from it."""
    return make_folder(tmp_path_factory.mktemp("trainonly"), {"train": 20})


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory: pytest.TempPathFactory, tiny_folder: Path) -> tuple[list[str], Path]:
    """A tiny experiment trained once per session: ``(its overrides, experiments/tiny)``.

    Shared by every test that needs a checkpoint: copy it (``shutil.copytree``) before changing it.
    """
    overrides = tiny_overrides(tmp_path_factory.mktemp("trained"), tiny_folder, "epochs=3", TRAINED_CAMS)
    cfg = compose_cfg("train", overrides)
    tasks.train(cfg)
    return overrides, Path(cfg.paths.experiments) / cfg.experiment


@pytest.fixture
def tiny_cfg(tmp_path: Path, tiny_folder: Path) -> DictConfig:
    return compose_cfg("train", tiny_overrides(tmp_path, tiny_folder))
