"""loader.batch_size=auto: the search finds the largest batch that trains (out of memory simulated on the CPU), keeps
its headroom, respects the caps, agrees across ranks, leaves the weights as they were, and is refused off CUDA."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig
from torch import nn

import imgclf.tasks as tasks
from helpers import compose_cfg, copy_trained, tiny_overrides
from imgclf.errors import CheckpointError, ConfigError, TrainingError
from imgclf.models.classifier import Classifier
from imgclf.tasks import build
from imgclf.tasks.batch_size import (
    batch_for_evaluation,
    choose,
    describe,
    find_batch_size,
    refuse_off_cuda,
    resolve_batch_size,
)
from imgclf.tasks.config_check import check_config
from imgclf.training.batch_size import (
    find_largest,
    is_out_of_memory,
    search_limit,
    trial_step,
    unchanged,
    with_headroom,
)
from imgclf.training.distributed import Distributed

CPU = torch.device("cpu")


def out_of_memory_above(limit: int, error: type[RuntimeError] = torch.OutOfMemoryError, text: str = "") -> list[int]:
    """A fake trial step: batches up to ``limit`` train, larger ones raise what a GPU out of memory raises."""
    tried: list[int] = []

    def step(batch: int) -> None:
        tried.append(batch)
        if batch > limit:
            raise error(text or f"CUDA out of memory. Tried to allocate {batch} MiB (simulated)")

    step.tried = tried  # type: ignore[attr-defined]
    return step  # type: ignore[return-value]


def expected_batch(largest: int) -> int:
    """The stated rule, written out again: 90% of the largest that fit, down to a multiple of 8 (when at least 8),
    at least 2."""
    kept = int(largest * 9 // 10)
    return max(2, kept - kept % 8 if kept >= 8 else kept)


@pytest.mark.parametrize("limit", [2, 3, 7, 9, 100, 432, 1000])
def test_finds_exactly_the_largest_batch_and_keeps_the_headroom(limit: int) -> None:
    step = out_of_memory_above(limit)
    search = find_largest(step, limit=search_limit(1024))
    assert search.largest == limit and search.failed == limit + 1
    assert max(step.tried) < 2 * limit + 2  # doubling stopped at the first failure
    choice = choose(out_of_memory_above(limit), max_batch_size=1024, train_size=100_000)
    assert choice.batch_size == expected_batch(limit) == with_headroom(limit)
    if limit == 432:
        assert choice.batch_size == 384  # the rule's example: 388.8 -> 388 -> 384


def test_backs_off_by_bisection_on_every_out_of_memory_error() -> None:
    for error, text in [
        (torch.OutOfMemoryError, ""),
        (RuntimeError, "CUDA out of memory. Tried to allocate 2.00 GiB"),
        (RuntimeError, "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    ]:
        step = out_of_memory_above(100, error, text)
        search = find_largest(step, limit=1024, start=2)
        assert search.largest == 100
        assert step.tried[:7] == [2, 4, 8, 16, 32, 64, 128]  # grown by doubling
        assert step.tried[7:] == [96, 112, 104, 100, 102, 101]  # then bisected between 64 and 128
        assert [trained for _, trained in search.tries] == [True] * 6 + [False, True, False, False, True, False, False]


def test_an_error_other_than_out_of_memory_is_not_a_smaller_batch() -> None:
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes"):
        find_largest(out_of_memory_above(10, RuntimeError, "mat1 and mat2 shapes cannot be multiplied"), limit=64)


def test_nothing_fits_gives_zero() -> None:
    search = find_largest(out_of_memory_above(1), limit=1024, start=16)
    assert search.largest == 0 and search.failed == 2  # bisected down to the smallest batch, which failed too
    assert choose(out_of_memory_above(1), max_batch_size=64, train_size=100).batch_size == 0


def test_caps_at_max_batch_size_and_the_train_split_keeping_headroom() -> None:
    step = out_of_memory_above(10**9)  # memory never runs out: the caps decide
    choice = choose(step, max_batch_size=1024, train_size=100_000)
    assert choice.batch_size == 1024 and "loader.max_batch_size" in choice.cap[1]
    assert max(step.tried) == search_limit(1024)  # the smallest batch whose 90% reaches the cap: 1138
    assert with_headroom(max(step.tried)) >= 1024 > with_headroom(max(step.tried) - 1)
    assert choose(out_of_memory_above(10**9), max_batch_size=1024, train_size=100).batch_size == 100
    # memory runs out just above the cap: the headroom is kept below the memory limit, not the cap
    assert choose(out_of_memory_above(1030), max_batch_size=1024, train_size=100_000).batch_size == 920


class FakeGroup(Distributed):
    """Three ranks whose other two found ``others`` (gather is the one collective the choice makes)."""

    def __init__(self, others: tuple[int, int]) -> None:
        super().__init__(rank=1, local_rank=1, world_size=3)
        object.__setattr__(self, "others", others)

    def gather(self, value: object) -> list[object]:
        return [self.others[0], value, self.others[1]]


def test_ranks_agree_on_the_smallest_batch() -> None:
    choice = choose(out_of_memory_above(432), max_batch_size=1024, train_size=100_000, group=FakeGroup((400, 512)))
    assert choice.found == (400, 384, 512) and choice.batch_size == 384
    assert "the smallest of 3 ranks' [400, 384, 512]: global batch 1152" in describe(choice, FakeGroup((400, 512)))
    choice = choose(out_of_memory_above(10**9), max_batch_size=1024, train_size=100_000, group=FakeGroup((200, 512)))
    assert choice.batch_size == 200
    # the train split is shared by the ranks: each rank's batch is at most its share
    choice = choose(out_of_memory_above(10**9), max_batch_size=1024, train_size=90, group=FakeGroup((999, 999)))
    assert choice.found[1] == 30 and choice.batch_size == 30
    # a rank where nothing fits: every rank learns it (0), none waits for it
    choice = choose(out_of_memory_above(1), max_batch_size=1024, train_size=100_000, group=FakeGroup((400, 512)))
    assert choice.batch_size == 0


class OutOfMemoryNet(nn.Module):
    """A tiny CNN (BatchNorm, dropout) that runs out of "memory" above ``limit`` images, in its forward pass or in
    its backward pass (after the tries below it changed the weights)."""

    def __init__(self, num_classes: int = 10, limit: int = 40, where: str = "backward") -> None:
        super().__init__()
        self.limit, self.where = limit, where
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Linear(6, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        if x.shape[0] > self.limit:
            if self.where == "forward":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (simulated)")
            x = _FailBackward.apply(x)
        return self.head(x.mean((2, 3)))


class _FailBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (simulated in backward)")


def _auto_cfg(*extra: str) -> DictConfig:
    cfg = compose_cfg(
        "train",
        [
            "experiment=bs",
            "dataset.image_size=12",
            "dataset.num_classes=10",
            "loader.batch_size=auto",
            "trainer.amp=none",
            *extra,
        ],
    )
    check_config(cfg)
    return cfg


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


@pytest.mark.parametrize("where", ["forward", "backward"])
@pytest.mark.slow
def test_the_search_leaves_weights_optimizer_and_random_streams_unchanged(where: str) -> None:
    cfg = _auto_cfg("optimizer=adamw", "trainer.clip_grad_norm=1.0", "trainer.accumulate=2")
    net = OutOfMemoryNet(limit=37, where=where)
    model = Classifier(net, [0.5] * 3, [0.25] * 3)
    optimizer, _ = build.optimizer_and_scheduler(cfg, net)
    before, optimizer_before = _state(model), optimizer.state_dict()
    rng = torch.get_rng_state()
    step = trial_step(model, optimizer, nn.CrossEntropyLoss(), image_size=12, num_classes=10, device=CPU, accumulate=2)
    step(4)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # a try does change them
    model.load_state_dict(before)
    optimizer.load_state_dict(optimizer_before)
    torch.set_rng_state(rng)
    with unchanged(model, optimizer, CPU):
        search = find_largest(step, limit=search_limit(1024))
    assert search.largest == 37
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # BatchNorm statistics included
    assert optimizer.state_dict()["state"] == {} and optimizer.param_groups[0]["lr"] == cfg.optimizer.lr
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_find_batch_size_writes_the_batch_into_the_config_and_says_the_lr_rule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = _auto_cfg()
    net = OutOfMemoryNet(limit=63)  # 2**k - 1: one try fails (64), then bisection only goes up (a collection each)
    model = Classifier(net, [0.5] * 3, [0.25] * 3)
    before = _state(model)
    with caplog.at_level(logging.INFO, logger="imgclf"):
        batch = find_batch_size(cfg, model, train_size=5000, device=CPU)
    assert batch == cfg.loader.batch_size == 56 == expected_batch(63)
    assert isinstance(cfg.loader.batch_size, int)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    line = next(r.getMessage() for r in caplog.records if "batch size auto" in r.getMessage())
    assert "batch size auto: 56 (largest that fit: 63, 90% headroom" in line
    assert f"optimizer.lr {cfg.optimizer.lr:g} as configured (not scaled)" in line


def test_nothing_fits_stops_the_run_saying_what_to_change() -> None:
    cfg = _auto_cfg()
    model = Classifier(OutOfMemoryNet(limit=1, where="forward"), [0.5] * 3, [0.25] * 3)
    with pytest.raises(TrainingError, match=r"not even a batch of 2 images of 12 px .* trainer\.amp=bf16"):
        find_batch_size(cfg, model, train_size=5000, device=CPU)
    assert cfg.loader.batch_size == "auto"


def test_linear_lr_scaling_rebuilds_the_optimizer_and_scheduler(caplog: pytest.LogCaptureFixture) -> None:
    cfg = _auto_cfg("loader.auto_reference_batch=28", "scheduler=cosine", "scheduler.warmup_steps=5")
    lr = cfg.optimizer.lr
    net = OutOfMemoryNet(limit=63)
    model = Classifier(net, [0.5] * 3, [0.25] * 3)
    optimizer, scheduler = build.optimizer_and_scheduler(cfg, net)
    with caplog.at_level(logging.INFO, logger="imgclf"):
        batch = find_batch_size(cfg, model, train_size=5000, device=CPU, optimizer=optimizer, scheduler=scheduler)
    assert batch == 56
    assert cfg.optimizer.lr == pytest.approx(lr * 2)  # 56 / 28
    assert scheduler.scheduler.base_lrs == [pytest.approx(lr * 2)]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr * 2 / 5)  # the first warm-up step, of the new rate
    assert optimizer.state_dict()["state"] == {}
    assert f"optimizer.lr {lr * 2:g} scaled linearly from {lr:g} at batch 28" in caplog.text


def test_auto_is_refused_off_cuda_naming_the_key(tmp_path: Path, tiny_folder: Path) -> None:
    cfg = _auto_cfg()
    model = Classifier(OutOfMemoryNet(), [0.5] * 3, [0.25] * 3)
    for device in ("cpu", "mps"):
        with pytest.raises(ConfigError, match=r"loader\.batch_size=auto .* CUDA .*loader\.batch_size=64"):
            resolve_batch_size(cfg, model, train_size=100, device=torch.device(device))
    assert cfg.loader.batch_size == "auto"
    refuse_off_cuda(compose_cfg("train", ["experiment=bs", "loader.batch_size=32"]), CPU)  # a number: nothing to refuse
    assert (
        resolve_batch_size(
            compose_cfg("train", ["experiment=bs", "loader.batch_size=32"]), model, train_size=1, device=CPU
        )
        == 32
    )
    # imgclf-preview refuses it before decoding any image, as training does
    from imgclf.tasks.preview_task import preview

    with pytest.raises(ConfigError, match=r"loader\.batch_size=auto"):
        preview(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "loader.batch_size=auto", "device=cpu")))


def test_resuming_keeps_the_batch_and_rate_the_run_started_with() -> None:
    cfg = _auto_cfg("loader.auto_reference_batch=64")
    model = Classifier(OutOfMemoryNet(), [0.5] * 3, [0.25] * 3)
    payload = {"config": {"loader": {"batch_size": 96}, "optimizer": {"lr": 0.0042}}}
    assert resolve_batch_size(cfg, model, train_size=100, device=CPU, payload=payload) == 96  # no search, no refusal
    assert cfg.loader.batch_size == 96 and cfg.optimizer.lr == 0.0042


def test_evaluation_uses_the_batch_the_checkpoint_trained_with() -> None:
    cfg = _auto_cfg()
    assert batch_for_evaluation(cfg, {"config": {"loader": {"batch_size": 24}}}, Path("best.pt")) == 24
    assert cfg.loader.batch_size == 24
    with pytest.raises(CheckpointError, match=r"loader\.batch_size=auto .*best\.pt records none"):
        batch_for_evaluation(_auto_cfg(), {"config": {"loader": {}}}, Path("best.pt"))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("loader.batch_size=big", "loader.batch_size"),
        ("loader.batch_size=0", "loader.batch_size"),
        ("loader.max_batch_size=1", "loader.max_batch_size"),
        ("loader.auto_reference_batch=0", "loader.auto_reference_batch"),
    ],
)
def test_config_check_accepts_a_number_or_auto(override: str, key: str) -> None:
    check_config(compose_cfg("train", ["experiment=bs", "loader.batch_size=auto"]))
    check_config(compose_cfg("train", ["experiment=bs", "loader.batch_size=auto", "loader.auto_reference_batch=256"]))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_config(compose_cfg("train", ["experiment=bs", override]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the search measures device memory")
def test_on_cuda_finds_a_batch_that_trains_with_weights_unchanged() -> None:
    """On a real GPU with 2% of its memory allowed to this process: a real out-of-memory error stops the growth."""
    device = torch.device("cuda", torch.cuda.current_device())  # the memory fraction needs an index
    cfg = _auto_cfg("dataset.image_size=64", "loader.max_batch_size=100000", "trainer.amp=bf16")
    net = build.network(cfg).to(device)
    model = Classifier(net, [0.5] * 3, [0.25] * 3).to(device)
    optimizer, scheduler = build.optimizer_and_scheduler(cfg, net)
    before = _state(model)
    torch.cuda.set_per_process_memory_fraction(0.02, device)
    try:
        batch = resolve_batch_size(
            cfg, model, train_size=10**6, device=device, optimizer=optimizer, scheduler=scheduler
        )
        assert 2 <= batch < 100_000 and cfg.loader.batch_size == batch  # memory ran out before the cap
        step = trial_step(model, optimizer, nn.CrossEntropyLoss(), image_size=64, num_classes=10, device=device)
        with unchanged(model, optimizer, device):
            step(batch)  # the batch chosen trains
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_test_py_with_auto_evaluates_in_the_checkpoints_batch(
    trained_tiny: tuple[list[str], Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides, _ = copy_trained(trained_tiny, tmp_path, "loader.batch_size=auto", "device=cpu")
    with caplog.at_level(logging.INFO, logger="imgclf"):
        metrics = tasks.test(compose_cfg("train", overrides))
    assert 0 <= metrics["accuracy"] <= 1  # the report was written
    assert "loader.batch_size=auto: evaluating in batches of 8, the batch best.pt trained with" in caplog.text


def _rank_choice(rank: int, world: int, store: str, results: str) -> None:
    """One rank of a real gloo group: it finds its own largest batch (a different simulated limit per rank)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        group = Distributed(rank, rank, world)
        choice = choose(out_of_memory_above(100 * (rank + 1)), max_batch_size=1024, train_size=10**5, group=group)
        Path(results, str(rank)).write_text(f"{choice.batch_size} {list(choice.found)}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: about 40 s on 2 shared cores
def test_ranks_of_a_real_process_group_agree(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_rank_choice, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    expected = f"{with_headroom(100)} {[with_headroom(100), with_headroom(200)]}"
    assert [(tmp_path / str(rank)).read_text() for rank in (0, 1)] == [expected, expected]


def test_train_py_with_auto_on_the_cpu_is_refused_before_any_image_is_decoded(
    tmp_path: Path, tiny_folder: Path
) -> None:
    cfg = compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "loader.batch_size=auto", "device=cpu"))
    with pytest.raises(ConfigError, match=r"loader\.batch_size=auto"):
        tasks.train(cfg)
    assert not (tmp_path / "cache").exists()  # refused before the decoded-image cache was built


def test_lr_find_with_auto_on_the_cpu_is_refused_naming_the_key(tmp_path: Path, tiny_folder: Path) -> None:
    from imgclf.tasks.lr_find_task import lr_find

    cfg = compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "loader.batch_size=auto", "device=cpu"))
    with pytest.raises(ConfigError, match=r"loader\.batch_size=auto"):
        lr_find(cfg)
