"""What the tests share: configs composed exactly as the CLI composes them, tiny image folders
drawn on the fly, and small stand-ins. Fixtures built from these live in conftest.py."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

import imgclf.tasks  # noqa: F401  registers the resolvers the YAML uses

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"
CLASSES = ("circle", "square", "stripes")


def compose_cfg(config_name: str = "train", overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``overrides``, as ``python train.py`` would."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def options(group: str) -> list[str]:
    """Every option (YAML file) of a config group."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def draw(kind: int, rng: np.random.Generator, size: int = 24) -> Image.Image:
    """A noisy picture whose class is visible in its shape and colour."""
    img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    c = size / 2 + rng.uniform(-2, 2, 2)
    if kind == 0:
        mask = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 < (size / 3) ** 2
    elif kind == 1:
        mask = (abs(yy - c[0]) < size / 3) & (abs(xx - c[1]) < size / 3)
    else:
        mask = (xx // 3) % 2 == 0
    img[mask] = np.clip(np.array([200, 80 + 60 * kind, 220 - 80 * kind]) + rng.integers(-30, 30, 3), 0, 255)
    return Image.fromarray(img)


def make_folder(
    root: Path,
    per_class: dict[str, int],
    classes: tuple[str, ...] = CLASSES,
    seed: int = 0,
    shape: tuple[int, int] = (24, 24),
) -> Path:
    """Write ``root/<split>/<class>/<n>.png|jpg`` with ``per_class[split]`` images per class, ``shape``
    (width, height) pixels each (split "": ``root/<class>/``)."""
    rng = np.random.default_rng(seed)
    width, height = shape
    for split, count in per_class.items():
        for kind, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                ext = "png" if i % 2 else "jpg"
                image = draw(kind % 3, rng, max(shape)).crop((0, 0, width, height))
                image.save(folder / f"{split or 'img'}_{i:03d}.{ext}")
    return root


def tiny_overrides(tmp_path: Path, root: Path, *extra: str) -> list[str]:
    """Overrides that train for seconds on ``root`` and write everything under ``tmp_path``."""
    return [
        "dataset=image_folder",
        f"dataset.root={root}",
        "dataset.image_size=16",
        "dataset.resize=squash",
        "epochs=2",
        "progress=false",
        "loader.batch_size=8",
        "experiment=tiny",
        f"paths.experiments={tmp_path / 'experiments'}",
        f"paths.runs={tmp_path / 'runs'}",
        f"paths.cache={tmp_path / 'cache'}",
        "report.cams=0",  # class activation maps: a figure at every new best and in every report (about a
        "report.cams_per_class=0",  # second each); the tests of the maps ask for them (report.cams=N in extra)
        *extra,
    ]


def run_cli(script: str, *args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python <script> args...`` the way a user does."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


class StopAfter:
    """Stands in for StopOnSignal: asks the loop to stop after ``n`` optimizer steps."""

    def __init__(self, n: int) -> None:
        self.n, self.calls, self.exit_code = n, 0, 143

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls >= self.n

    def __enter__(self) -> StopAfter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


TRAINED_CAMS = "report.cams=8"  # the session's trained run draws maps at its new bests (test_report checks them);
# its copies leave them out unless a test asks


def copy_trained(trained_tiny: tuple[list[str], Path], tmp_path: Path, *extra: str) -> tuple[list[str], Path]:
    """The session's trained experiment copied under ``tmp_path``: (overrides, experiment dir)."""
    overrides, exp = trained_tiny
    shutil.copytree(exp.parent, tmp_path / "experiments")
    kept = [o for o in overrides if o != TRAINED_CAMS and not o.startswith(("paths.experiments=", "paths.runs="))]
    moved = [*kept, f"paths.experiments={tmp_path / 'experiments'}", f"paths.runs={tmp_path / 'runs'}", *extra]
    return moved, tmp_path / "experiments" / exp.name


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class RecordingLoss(torch.nn.CrossEntropyLoss):
    """A loss that remembers the class weights it was called with (``loss._target_=helpers.RecordingLoss``):
    the config injects it where the loss of a real run goes."""

    calls: list[torch.Tensor | None] = []

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        RecordingLoss.calls.append(None if self.weight is None else self.weight.detach().clone())
        return super().forward(logits, labels)
