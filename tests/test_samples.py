"""E5: a sample that fails to load in the middle of a run (its file changed, vanished or was cut after the
check before training; ``loader.cache=none`` reads every file again at every epoch). ``dataset.bad_files=stop``
names it and exits 1; ``skip`` drops it from its batch (nothing takes its place) and counts it; a batch left
with no sample is skipped; and the run resumes afterwards."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import imgclf.tasks as tasks
from helpers import StopAfter, compose_cfg, make_folder, read_csv, tiny_overrides
from imgclf.data.dataset import LazyImages, SampleError, make_loader
from imgclf.experiment.checkpoint import load_checkpoint
from imgclf.experiment.run_log import read_metrics
from imgclf.training.engine import Totals, train_one_epoch
from imgclf.training.state import Interrupted

NO_CACHE = "loader.cache=none"  # decoded from the files at every access
JUNK = b"no longer an image"


class CountingLoss(torch.nn.CrossEntropyLoss):
    """A loss that remembers the size of every training batch (``loss._target_=test_samples.CountingLoss``)."""

    train_sizes: ClassVar[list[int]] = []

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # validation runs without gradients
            CountingLoss.train_sizes.append(labels.shape[0])
        return super().forward(logits, labels)


class SpoilAfter(StopAfter):
    """Stands in for StopOnSignal and never stops: after ``n`` optimizer steps it overwrites ``paths`` with junk."""

    def __init__(self, n: int, *paths: Path) -> None:
        super().__init__(n)
        self.paths = paths

    def __call__(self) -> bool:
        if super().__call__() and self.calls == self.n:
            for path in self.paths:
                path.write_bytes(JUNK)
        return False


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """21 train images (3 of the 24 are carved out as test: 3 batches of 8, 8, 5), 9 val."""
    return make_folder(tmp_path / "data", {"train": 8, "val": 3})


def train_rows(exp: Path) -> list[dict[str, str]]:
    return [row for row in read_csv(exp / "splits.csv") if row["split"] == "train"]


def test_E5_skip_drops_a_file_that_turns_to_junk_mid_run_and_counts_it(
    tmp_path: Path, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    victim = min((folder / "train" / "circle").glob("*.png"))
    val_victim = min((folder / "val" / "circle").glob("*.jpg"))  # the first val batch: later outputs shift
    CountingLoss.train_sizes.clear()
    cfg = compose_cfg(
        "train",
        tiny_overrides(tmp_path, folder, NO_CACHE, "dataset.bad_files=skip", "loss._target_=test_samples.CountingLoss"),
    )
    tasks.train(cfg, stop_signal=lambda: SpoilAfter(1, victim, val_victim))  # junk after the first step of epoch 1

    exp = Path(cfg.paths.experiments) / cfg.experiment
    last = read_metrics(exp / "metrics.jsonl")[-1]
    assert last["epoch"] == 2 and last["train/dropped_samples"] == 1 and last["val/dropped_samples"] == 1
    sizes, count = CountingLoss.train_sizes, len(train_rows(exp))  # 3 batches per epoch
    assert len(sizes) == 6 and sum(sizes[3:]) == count - 1, (
        "epoch 2 trained on all but the junk one: nothing replaced it"
    )
    assert "dataset.bad_files=skip" in caplog.text and str(victim) in caplog.text
    assert "epoch 2: 1 train sample(s) could not be loaded and were left out" in caplog.text


def test_E5_stop_names_the_sample_index_path_split_and_epoch_and_exits_1(
    tmp_path: Path, folder: Path, monkeypatch, caplog
) -> None:
    from imgclf.cli.exits import exit_on_error
    from imgclf.tasks import inputs

    overrides = tiny_overrides(tmp_path, folder, NO_CACHE)
    tasks.train(compose_cfg("train", [*overrides, "epochs=1"]))
    exp = tmp_path / "experiments" / "tiny"
    victim = sorted((folder / "train" / "square").glob("*.jpg"))[1]
    index = [row["path"] for row in train_rows(exp)].index(str(victim))
    build_loaders = inputs.train_loaders

    def spoil_after_the_check(*args, **kwargs):  # every file was checked (by content, J4): the file goes bad now,
        made = build_loaders(*args, **kwargs)  # while the run reads it, as a disk or another program would do it
        victim.write_bytes(bytes(victim.stat().st_size))
        return made

    monkeypatch.setattr(inputs, "train_loaders", spoil_after_the_check)
    with pytest.raises(SystemExit) as done:  # resumes epoch 2, which reads the file again
        exit_on_error(tasks.train, compose_cfg("train", [*overrides, "epochs=2"]))
    output = caplog.text
    assert done.value.code == 1, output
    assert f"[train] sample {index} ({victim}) could not be loaded in epoch 2" in output
    assert "not an image file" in output and "dataset.bad_files=skip" in output and "Traceback" not in output
    assert load_checkpoint(exp / "last.pt")["state"]["epoch"] == 1, "the last finished epoch stays resumable"


def spoiled_files(tmp_path: Path) -> tuple[list[str], list[int]]:
    """Six images: 0-1 fine, 2-3 junk (the whole second batch of 2), 4 fine, 5 gone."""
    paths = [tmp_path / f"{i}.png" for i in range(6)]
    make = make_folder(tmp_path / "src", {"": 3}, classes=("a", "b"))
    good = sorted(make.rglob("*.png")) + sorted(make.rglob("*.jpg"))
    for i, path in enumerate(paths):
        path.write_bytes(JUNK if i in (2, 3) else good[i].read_bytes())
    paths[5].unlink()
    return [str(p) for p in paths], [0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize("workers", [0, 1])
def test_E5_a_batch_whose_samples_all_fail_does_not_crash_collate(tmp_path: Path, workers: int) -> None:
    paths, labels = spoiled_files(tmp_path)
    dataset = LazyImages(paths, labels, 8, split="train", bad_files="skip")
    in_order = make_loader(dataset, batch_size=2, shuffle=False, num_workers=workers)
    batches = list(in_order)
    assert [len(b[1]) for b in batches] == [2, 1], "the all-junk batch is skipped, the gone file dropped"
    assert in_order.drop_metrics() == {"train/dropped_samples": 3, "train/dropped_batches": 1}
    assert torch.equal(batches[1][1], torch.tensor([0])), "sample 4 alone: nothing stood in for sample 5"
    assert [dataset.served_index(p) for p in range(3)] == [0, 1, 4], "outputs map back to their samples"

    class Tiny(torch.nn.Module):  # a training step on an empty batch would break BatchNorm statistics
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3 * 8 * 8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert len(x), "an empty batch reached the model"
            return self.fc(x.float().flatten(1) / 255)

    model = Tiny()
    training = make_loader(dataset, batch_size=2, shuffle=False, num_workers=workers, empty_batches=True)
    totals = Totals(torch.device("cpu"))
    train_one_epoch(
        model,
        training,
        torch.nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        device=torch.device("cpu"),
        totals=totals,
    )
    assert (totals.steps, totals.seen) == (3, 3), "the empty batch counts as a step (resume position), not as images"


def test_E5_stop_in_a_worker_process_is_the_same_clear_error(tmp_path: Path) -> None:
    paths, labels = spoiled_files(tmp_path)
    loader = make_loader(LazyImages(paths, labels, 8, split="val"), batch_size=2, shuffle=False, num_workers=1)
    with pytest.raises(SampleError) as caught:
        list(loader)
    message = str(caught.value)
    assert message.startswith(f"[val] sample 2 ({paths[2]}) could not be loaded in epoch 1: cannot be read: not an")
    assert "Traceback" not in message and "DataLoader worker" not in message


@pytest.mark.slow
def test_E5_resume_after_a_skip_leaves_out_changed_and_vanished_files(
    tmp_path: Path, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = tiny_overrides(tmp_path, folder, NO_CACHE, "dataset.bad_files=skip")
    with pytest.raises(Interrupted):
        tasks.train(compose_cfg("train", overrides), stop_signal=lambda: StopAfter(2))  # stopped in epoch 1
    exp = tmp_path / "experiments" / "tiny"
    assert load_checkpoint(exp / "last.pt")["state"]["step"] == 2
    circles = sorted((folder / "train" / "circle").glob("*.png"))
    junk, gone, swapped = circles[0], circles[1], circles[2]
    recorded = {row["path"]: row["sha1"] for row in train_rows(exp)}
    junk.write_bytes(JUNK)
    gone.unlink()
    swapped.write_bytes(next((folder / "val" / "stripes").glob("*.png")).read_bytes())  # a valid, other image

    caplog.clear()
    tasks.train(compose_cfg("train", overrides))  # resumes: neither refused nor crashed
    assert load_checkpoint(exp / "last.pt")["state"]["epoch"] == 2
    assert [r["epoch"] for r in read_metrics(exp / "metrics.jsonl")] == [1, 2]
    assert "skipping 3 unusable file(s)" in caplog.text
    after = {row["path"]: row["sha1"] for row in train_rows(exp)}
    assert after == recorded, "splits.csv keeps every file and the hash first recorded, so none comes back changed"
    assert recorded[str(swapped)] != hashlib.sha1(swapped.read_bytes()).hexdigest()
