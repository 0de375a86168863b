"""Faults in the middle of training (docs/reliability.md E2-E4): NaN losses, out of memory, dead or hung
loader workers. Each gets a clear message and never leaves non-finite weights on disk."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import imgclf.tasks as tasks
from helpers import ROOT, compose_cfg, tiny_overrides
from imgclf.data.dataset import DecodedImages, make_loader
from imgclf.errors import TrainingError
from imgclf.experiment.checkpoint import first_non_finite, load_checkpoint
from imgclf.models.small_cnn import SmallCNN
from imgclf.training.engine import TrainOptions, train_one_epoch
from imgclf.training.state import Diverged


class NaNAt:
    """Cross-entropy that returns NaN on the given (0-based) calls."""

    def __init__(self, bad_calls: set[int]) -> None:
        self.bad_calls, self.calls = bad_calls, 0
        self.loss = torch.nn.CrossEntropyLoss()

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = self.loss(logits, labels)
        self.calls += 1
        return loss * float("nan") if self.calls - 1 in self.bad_calls else loss


def tiny_setup(batches: int = 6):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    data = TensorDataset(torch.randn(4 * batches, 3, 2, 2), torch.randint(0, 3, (4 * batches,)))
    return model, make_loader(data, batch_size=4, shuffle=True), torch.optim.SGD(model.parameters(), lr=0.1)


def test_E2_nan_batches_are_skipped_and_counted() -> None:
    model, loader, optimizer = tiny_setup()
    before = [p.detach().clone() for p in model.parameters()]
    result = train_one_epoch(model, loader, NaNAt({1, 3}), optimizer, device=torch.device("cpu"))
    assert result["train/skipped_steps"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # good batches trained


def test_E2_nan_batches_in_a_row_stop_before_touching_the_weights() -> None:
    model, loader, optimizer = tiny_setup()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(Diverged, match=r"nan for 3 batches in a row \(batch 3 of 6, lr 0.1\)"):
        train_one_epoch(
            model,
            loader,
            NaNAt({0, 1, 2}),
            optimizer,
            device=torch.device("cpu"),
            options=TrainOptions(max_nonfinite=3),
        )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_E2_a_diverging_run_says_what_to_do_and_keeps_finite_checkpoints(
    tmp_path: Path, tiny_folder: Path, monkeypatch
) -> None:
    cfg = compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "epochs=2", "trainer.max_nonfinite=2"))
    real = torch.nn.CrossEntropyLoss.forward
    calls = {"n": 0}

    def nan_in_epoch_two(self, logits, labels):
        calls["n"] += 1
        loss = real(self, logits, labels)
        return loss * float("nan") if self.training and calls["n"] > 8 else loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", nan_in_epoch_two)
    with pytest.raises(TrainingError, match=r"training diverged: epoch 2: the loss was nan .*lr .*last.pt keeps"):
        tasks.train(cfg)
    last = load_checkpoint(Path(cfg.paths.experiments) / "tiny" / "last.pt")  # refuses non-finite weights
    assert last["state"]["epoch"] == 1


def test_E3_out_of_memory_names_the_batch_size_and_the_remedies(tmp_path: Path, tiny_folder: Path, monkeypatch) -> None:
    from imgclf.models.small_cnn import SmallCNN

    cfg = compose_cfg("train", tiny_overrides(tmp_path, tiny_folder))
    real = SmallCNN.forward

    def oom_when_training(self, x):
        if self.training:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, x)

    monkeypatch.setattr(SmallCNN, "forward", oom_when_training)
    with pytest.raises(TrainingError, match=r"out of memory on cpu with loader.batch_size=8 .*trainer.accumulate"):
        tasks.train(cfg)


class DiesInWorker(Dataset):
    """A dataset whose worker process is killed (as the OOM killer would) on the first sample."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int):
        if torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return torch.zeros(3, 4, 4, dtype=torch.uint8), 0


def test_E4_a_killed_loader_worker_gets_a_clear_message(tmp_path: Path, tiny_folder: Path, monkeypatch) -> None:
    # per-image augmentation: batches come from worker processes (batch augmentation uses threads)
    cfg = compose_cfg(
        "train", tiny_overrides(tmp_path, tiny_folder, "loader.num_workers=1", "loader.batch_augment=false")
    )
    monkeypatch.setattr(DecodedImages, "__getitems__", lambda self, indices: [DiesInWorker()[i] for i in indices])
    with pytest.raises(TrainingError, match=r"loader.num_workers=1: DataLoader worker .* loader.num_workers=0"):
        tasks.train(cfg)


class Hangs(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        time.sleep(30)
        return torch.zeros(1), 0


@pytest.mark.slow
def test_E4_a_hung_loader_worker_times_out() -> None:
    loader = make_loader(Hangs(), batch_size=2, shuffle=False, num_workers=1, timeout=1)
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="DataLoader timed out after 1 seconds"):
        next(iter(loader))
    assert time.perf_counter() - start < 20


def test_E2_non_finite_weights_are_never_written(tmp_path: Path) -> None:
    from imgclf.experiment.folder import ExperimentDir
    from imgclf.experiment.writer import CheckpointWriter
    from imgclf.training.scheduler import Scheduler
    from imgclf.training.state import TrainState

    model, _, optimizer = tiny_setup()
    exp = ExperimentDir(tmp_path / "exp", tmp_path / "runs")
    writer = CheckpointWriter(exp, model, optimizer, Scheduler(optimizer, None), {"class_names": ["a", "b", "c"]})
    writer.save(TrainState(epoch=1), best=True)
    good = exp.last.read_bytes()
    with torch.no_grad():
        model[1].weight[0, 0] = float("inf")
    with pytest.raises(Diverged, match=r"weight '1.weight' became NaN or infinite after epoch 2"):
        writer.save(TrainState(epoch=2), best=True)
    assert exp.last.read_bytes() == good and load_checkpoint(exp.best)["state"]["epoch"] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_E2_the_fast_check_names_a_non_finite_tensor_of_any_dtype_and_passes_huge_finite_ones(dtype, bad) -> None:
    state = {
        "a": torch.ones(3, 3),
        "b": torch.zeros(5, dtype=dtype),
        "steps": torch.tensor(7),  # integers are never checked
        "c": torch.ones(4, dtype=dtype),
    }
    assert first_non_finite(state) is None
    state["c"][2] = bad
    assert first_non_finite(state) == "c"
    huge = {"a": torch.full((1000,), torch.finfo(dtype).max / 2, dtype=dtype)}  # its norm overflows; it is finite
    assert first_non_finite(huge) is None


@pytest.mark.slow
def test_C4_disk_full_while_training_fails_the_run_and_keeps_a_resumable_last_pt(
    tmp_path: Path, tiny_folder: Path
) -> None:
    from test_checkpoint import run_with_file_size_limit

    overrides = tiny_overrides(tmp_path, tiny_folder, "epochs=1")
    tasks.train(compose_cfg("train", overrides))
    exp = tmp_path / "experiments" / "tiny"
    assert (
        (exp / "last.pt").stat().st_size
        > 300_000
        > max(p.stat().st_size for p in (exp / "metrics.jsonl", exp / "splits.csv"))
    )
    # epoch 2 under a real 300 kB file size limit: the logs still fit, the checkpoint does not
    train = "import runpy; runpy.run_path('train.py', run_name='__main__')"
    done = run_with_file_size_limit(300_000, train, "train.py", *overrides, "epochs=2", cwd=ROOT)
    said = done.stdout + done.stderr
    assert done.returncode == 1, said[-2000:]
    assert "Traceback" not in said and "could not write checkpoint" in said
    assert "File too large" in said and "run the same command to resume" in said
    assert load_checkpoint(exp / "last.pt")["state"]["epoch"] == 1  # the epoch before is intact
    assert not list(exp.glob(".tmp-*"))
    tasks.train(compose_cfg("train", [*overrides, "epochs=2"]))  # and the same command, with space, resumes
    assert load_checkpoint(exp / "last.pt")["state"]["epoch"] == 2


def allocate_a_petabyte(self, x):
    """What a model too large for the machine meets: torch's CPU allocator cannot allocate (a real failure, which
    torch raises as a RuntimeError, not as torch.OutOfMemoryError)."""
    return torch.empty(2**50, dtype=torch.uint8)


PLAIN_FORWARD = SmallCNN.forward


def allocate_a_petabyte_when_training(self, x):
    return allocate_a_petabyte(self, x) if self.training else PLAIN_FORWARD(self, x)


def test_E3_the_cpu_allocator_running_out_in_training_is_explained(
    tmp_path: Path, tiny_folder: Path, monkeypatch
) -> None:
    from imgclf.models.small_cnn import SmallCNN

    monkeypatch.setattr(SmallCNN, "forward", allocate_a_petabyte_when_training)
    with pytest.raises(
        TrainingError,
        match=r"out of memory on cpu with loader.batch_size=8 at dataset.image_size=16 "
        r"while training \(.*DefaultCPUAllocator.*\); no checkpoint was written",
    ):
        tasks.train(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder)))


@pytest.fixture
def tested(trained_tiny, tmp_path: Path):
    """A copy of the session's trained experiment: (overrides for test.py, experiment folder)."""
    from helpers import copy_trained

    return copy_trained(trained_tiny, tmp_path, "report.bootstrap=0")


def test_E3_out_of_memory_in_test_py_is_explained_and_writes_no_report(tested, monkeypatch) -> None:
    from imgclf.models.small_cnn import SmallCNN

    overrides, exp = tested
    monkeypatch.setattr(SmallCNN, "forward", allocate_a_petabyte)
    with pytest.raises(
        TrainingError,
        match=r"out of memory on cpu with loader.batch_size=8 .* while evaluating "
        r"\(.*DefaultCPUAllocator.*\); nothing was written. Lower loader.batch_size",
    ):
        tasks.test(compose_cfg("train", overrides))
    assert not (exp / "test").exists()


def test_E4_test_py_names_a_killed_loader_worker(tested, monkeypatch) -> None:
    overrides, _ = tested
    cfg = compose_cfg("train", [*overrides, "loader.num_workers=1", "loader.batch_augment=false"])
    monkeypatch.setattr(DecodedImages, "__getitems__", lambda self, indices: [DiesInWorker()[i] for i in indices])
    with pytest.raises(
        TrainingError,
        match=r"while evaluating with loader.num_workers=1: DataLoader worker .* "
        r"loader.num_workers=0",
    ):
        tasks.test(cfg)


@pytest.mark.slow
def test_E4_test_py_stops_a_hung_loader_worker_after_loader_timeout(tested, monkeypatch) -> None:
    overrides, _ = tested
    cfg = compose_cfg("train", [*overrides, "loader.num_workers=1", "loader.batch_augment=false", "loader.timeout=1"])
    monkeypatch.setattr(DecodedImages, "__getitems__", lambda self, indices: [Hangs()[i] for i in indices])
    start = time.perf_counter()
    with pytest.raises(TrainingError, match=r"DataLoader timed out after 1 seconds.*loader.timeout=1"):
        tasks.test(cfg)
    assert time.perf_counter() - start < 25
