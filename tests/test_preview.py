"""imgclf-preview: the pictures hold the batches the training loop gets (same seed, same pixels), captioned with
their labels (two classes and their shares after MixUp); the first batch of a run reaches TensorBoard."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import imgclf.tasks as tasks
from helpers import CLASSES, ROOT, StopAfter, compose_cfg, tiny_overrides
from imgclf.errors import ConfigError
from imgclf.reporting.batches import batch_grid, captions, displayable, first_batch_to_tensorboard
from imgclf.tasks.folders import experiment_dir
from imgclf.tasks.preview_task import first_batches, preview
from imgclf.training.engine import StepExtras, train_one_epoch
from imgclf.training.first_batch import tap_first_batch
from imgclf.training.state import Interrupted


class RecordingNet(nn.Module):
    """A tiny network that keeps the inputs of its training-mode calls (``model._target_=test_preview.RecordingNet``):
    what the loop fed the model, normalized by ``Classifier``."""

    inputs: list[torch.Tensor] = []

    def __init__(self, num_classes: int = 3, **_: object) -> None:  # the replaced model's other keys (width...)
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            RecordingNet.inputs.append(x.detach().clone())
        return self.head(self.conv(x).mean((2, 3)))


class RecordingLoss(nn.CrossEntropyLoss):
    """Keeps the labels of every call (``loss._target_=test_preview.RecordingLoss``): soft after MixUp."""

    labels: list[torch.Tensor] = []

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        RecordingLoss.labels.append(labels.detach().clone())
        return super().forward(logits, labels)


RECORDING = ["model._target_=test_preview.RecordingNet", "loss._target_=test_preview.RecordingLoss"]


def _overrides(tmp_path: Path, folder: Path, *extra: str) -> list[str]:
    return tiny_overrides(tmp_path, folder, "augmentation=flip", "batch_mix=mixup", "loader.cache=memory", *extra)


def _normalized(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


@pytest.mark.parametrize("batched", ["true", "false"], ids=["batch_augment", "per_image"])
def test_preview_is_the_batch_training_gets(tmp_path: Path, tiny_folder: Path, batched: str) -> None:
    """A real train(cfg) stopped after its first step, and the preview of the same config: the same pixels and the
    same soft labels. Per image, flips and MixUp draw from torch's global generator, so this holds only when the
    preview builds the run's objects in the run's order (seeded, then the network's initialisation first)."""
    extra = [f"loader.batch_augment={batched}", *RECORDING]
    RecordingNet.inputs.clear()
    RecordingLoss.labels.clear()
    with pytest.raises(Interrupted):
        tasks.train(
            compose_cfg("train", _overrides(tmp_path / "run", tiny_folder, *extra)), stop_signal=lambda: StopAfter(1)
        )
    fed, given = RecordingNet.inputs[0], RecordingLoss.labels[0]

    cfg = compose_cfg("train", _overrides(tmp_path / "preview", tiny_folder, *extra))
    shown = first_batches(cfg, experiment_dir(cfg), 1)
    images, labels = shown.batches[0]
    assert labels.ndim == 2 and not torch.equal(labels.max(1).values, torch.ones(len(labels)))  # mixed
    assert torch.allclose(_normalized(images, shown.mean, shown.std), fed, atol=1e-5)
    assert torch.allclose(labels, given, atol=1e-6)
    # the run put the same batch into TensorBoard (train_task taps the loop's first batch)
    assert np.array_equal(
        _first_batch_in_tensorboard(tmp_path / "run" / "runs"), np.concatenate(displayable(images), 1)
    )


def _first_batch_in_tensorboard(runs: Path) -> np.ndarray:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (folder,) = {p.parent for p in runs.rglob("events.out.tfevents*")}
    events = EventAccumulator(str(folder), size_guidance={"images": 0})
    events.Reload()
    encoded = events.Images("train/first_batch_pixels")[0].encoded_image_string
    return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))


@pytest.mark.slow
def test_preview_of_cached_features_follows_the_heads_order(tmp_path: Path, tiny_folder: Path) -> None:
    """trainer.cache_features: the head's first batch is of the features of the previewed images, in their order
    (the labels the loss got are the preview's: 8 of 48 images drawn in a seeded order)."""
    extra = ["model=lite0", "model.freeze=backbone", "dataset.image_size=32", "trainer.cache_features=true"]
    extra += ["loss._target_=test_preview.RecordingLoss", "batch_mix=none", "augmentation=none"]
    RecordingLoss.labels.clear()
    with pytest.raises(Interrupted):
        tasks.train(
            compose_cfg("train", tiny_overrides(tmp_path / "run", tiny_folder, *extra)),
            stop_signal=lambda: StopAfter(1),
        )
    cfg = compose_cfg("train", tiny_overrides(tmp_path / "preview", tiny_folder, *extra))
    shown = first_batches(cfg, experiment_dir(cfg), 1)
    assert shown.features and shown.batches[0][1].tolist() == RecordingLoss.labels[0].tolist()


def test_preview_writes_grids_and_keeps_the_experiment(tmp_path: Path, tiny_folder: Path) -> None:
    """preview.png and preview_2.png with preview.images tiles each, in an experiment that already holds a
    checkpoint: nothing of it is removed or changed; with a batch of 8 images, a limit of 5 draws 5 tiles."""
    overrides = _overrides(tmp_path, tiny_folder, *RECORDING)
    with pytest.raises(Interrupted):
        tasks.train(compose_cfg("train", overrides), stop_signal=lambda: StopAfter(1))
    exp = tmp_path / "experiments" / "tiny"
    before = {p.name: p.stat().st_mtime_ns for p in exp.iterdir()}
    assert "last.pt" in before

    written = preview(compose_cfg("train", [*overrides, "preview.batches=2", "preview.images=5"]))

    assert [p.name for p in written] == ["preview.png", "preview_2.png"]
    after = {p.name: p.stat().st_mtime_ns for p in exp.iterdir()}
    assert {k: v for k, v in after.items() if not k.startswith("preview")} == before
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    cfg = compose_cfg("train", [*overrides, "experiment=again"])
    images, labels = first_batches(cfg, experiment_dir(cfg), 1).batches[0]
    fig = batch_grid(images, labels, CLASSES, limit=5)
    assert len([ax for ax in fig.axes if ax.images]) == 5  # the tiles preview.png holds


def test_mixed_labels_are_captioned_with_their_shares() -> None:
    labels = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0], [0.0, 0.45, 0.55]])
    assert captions(labels, CLASSES) == ["circle 70% + square 30%", "stripes", "stripes 55% + square 45%"]
    assert captions(torch.tensor([1, 0]), CLASSES) == ["square", "circle"]


def test_mixup_captions_of_a_previewed_batch(tmp_path: Path, tiny_folder: Path) -> None:
    """Every caption of a MixUp batch names its image's two classes and their shares (alpha 50: every image is
    about half another one, so an image of one class mixed with one of another shows both)."""
    cfg = compose_cfg("train", _overrides(tmp_path, tiny_folder, "batch_mix.alpha=50.0"))
    images, labels = first_batches(cfg, experiment_dir(cfg), 1).batches[0]
    titles = [ax.get_title() for ax in batch_grid(images, labels, CLASSES).axes if ax.images]
    mixed = 0
    for title, row in zip(titles, labels, strict=True):
        shares, top = row.topk(2)
        if shares[1] > 0.01:
            mixed += 1
            assert title == f"{CLASSES[top[0]]} {float(shares[0]):.0%} + {CLASSES[top[1]]} {float(shares[1]):.0%}"
        else:
            assert title == CLASSES[top[0]]
    assert mixed >= len(titles) // 2


def test_displayable_undoes_normalization() -> None:
    pixels = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    shown = displayable(_normalized(pixels, mean, std), mean, std)
    assert (shown == pixels.permute(0, 2, 3, 1).numpy()).all()
    assert (displayable(pixels.float() / 255) == shown).all()


def test_tapped_loop_shows_the_batch_it_trains_on(tmp_path: Path) -> None:
    """tap_first_batch: the callback gets the first batch the model trains on (after MixUp), once, and the run's
    batches are the same as without the tap."""
    from torchvision.transforms import v2

    batches = [(torch.rand(4, 3, 8, 8), torch.randint(0, 3, (4,))) for _ in range(3)]
    for mix in (None, v2.MixUp(alpha=0.4, num_classes=3)):
        fed: list[list[torch.Tensor]] = []
        for tapped in (False, True):
            RecordingNet.inputs.clear()
            torch.manual_seed(0)
            model = RecordingNet()
            loader, extras, shown = _List(batches), StepExtras(batch_mix=mix), []
            if tapped:
                loader, extras = tap_first_batch(loader, extras, lambda x, y, shown=shown: shown.append((x, y)))
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            train_one_epoch(model, loader, nn.CrossEntropyLoss(), optimizer, device=torch.device("cpu"), extras=extras)
            fed.append(list(RecordingNet.inputs))
        assert len(shown) == 1
        assert torch.equal(shown[0][0].float(), fed[1][0].float())  # the model's input (no Classifier here)
        assert all(torch.equal(a, b) for a, b in zip(fed[0], fed[1], strict=True))


def test_first_batch_in_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    images = torch.rand(6, 3, 10, 12)
    first_batch_to_tensorboard(writer, images, torch.tensor([[0.6, 0.4, 0.0]] * 6), CLASSES, limit=4)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == {"train/first_batch", "train/first_batch_pixels"}
    pixels = events.Images("train/first_batch_pixels")[0]
    assert (pixels.width, pixels.height) == (12 * 4, 10)  # 4 images side by side, at their own size


class _List:
    """A list of batches as a train loader."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):  # noqa: ANN204
        return iter(self.batches)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        pass


def test_cli_help_answers_at_once() -> None:
    command = [sys.executable, "-m", "imgclf.cli.preview"]
    helped = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "preview.batches" in helped.stdout
    version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("imgclf-preview (imgclf ")


@pytest.mark.slow
def test_cli_writes_a_preview(tmp_path: Path, tiny_folder: Path) -> None:
    """What a user runs: the console script's module, Hydra composing conf/ as for train.py."""
    done = subprocess.run(
        [sys.executable, "-m", "imgclf.cli.preview", *_overrides(tmp_path, tiny_folder), "preview.images=4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    exp = tmp_path / "experiments" / "tiny"
    assert (exp / "preview.png").is_file() and (exp / ".hydra" / "preview").is_dir()


def test_a_bad_preview_key_is_named_and_leaves_no_folder(tmp_path: Path, tiny_folder: Path) -> None:
    with pytest.raises(ConfigError, match="preview.images=0: expected a whole number"):
        preview(compose_cfg("train", _overrides(tmp_path, tiny_folder, "preview.images=0")))
    assert not (tmp_path / "experiments").exists()
