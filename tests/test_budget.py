"""trainer.budget: the run plans its epochs to end on time, with its learning-rate schedule completed (issue 30)."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
import torch

import imgclf.tasks as tasks
from helpers import StopAfter, compose_cfg, run_cli, tiny_overrides
from imgclf.errors import ConfigError
from imgclf.runtime import process_age
from imgclf.training.budget import Budget
from imgclf.training.scheduler import Scheduler
from imgclf.training.state import Interrupted


def cosine(lr: float = 1.0, units: int = 10) -> Scheduler:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    factory = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=units)  # noqa: E731
    return Scheduler(optimizer, factory, interval="epoch")


def test_the_schedule_is_laid_over_the_planned_steps_and_ends_at_its_minimum() -> None:
    scheduler = cosine()
    scheduler.follow_plan(10)
    scheduler.plan(40)
    lrs = []
    for _ in range(40):
        scheduler.after_step()
        lrs.append(scheduler.lr())
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # the whole cosine in 40 steps, whatever `epochs` said
    assert lrs[19] == pytest.approx(0.5, abs=0.05)  # half-way: the cosine's middle
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    scheduler.after_epoch(0.5)  # an epoch's end moves nothing: the plan drives the schedule
    assert scheduler.lr() == lrs[-1]


def test_a_shorter_plan_speeds_the_schedule_up_without_a_jump() -> None:
    scheduler = cosine()
    scheduler.follow_plan(10)
    scheduler.plan(100)
    for _ in range(30):
        scheduler.after_step()
    before = scheduler.lr()
    scheduler.plan(20)  # the machine slowed down: 20 steps left instead of 70
    lrs = []
    for _ in range(20):
        scheduler.after_step()
        lrs.append(scheduler.lr())
    steepest = max(a - b for a, b in zip([before, *lrs], lrs, strict=False))
    assert before - lrs[0] <= steepest + 1e-9 and before - lrs[0] < 0.1  # moves on from where it was
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # and still ends at the minimum, on the last planned step


def test_a_schedule_without_a_closed_form_is_refused_naming_the_key() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = Scheduler(optimizer, lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0))
    with pytest.raises(ConfigError, match="trainer.budget.*LambdaLR"):
        scheduler.follow_plan(10)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def planner(minutes: float, clock: Clock, **kw) -> tuple[Budget, list[int]]:
    plans: list[int] = []
    args = {"max_epochs": 1000, "steps_per_epoch": 20, "val_batches": 3, "on_plan": plans.append, "clock": clock}
    return Budget(minutes, started=0.0, **{**args, **kw}), plans


def run_epoch(budget: Budget, done: int, clock: Clock, step_seconds: float, steps: int = 20) -> float:
    began = clock.now
    for step in range(1, steps + 1):
        clock.now += step_seconds
        budget.after_step(done, step)
    clock.now += 1.0  # validation and checkpoints
    budget.end_epoch(done + 1, clock.now - began)
    return clock.now - began


def test_the_plan_fits_the_budget_from_the_measured_speed_and_shrinks_when_the_machine_slows() -> None:
    clock = Clock()
    clock.now = 30.0  # start-up and caching are spent budget
    budget, plans = planner(10, clock)
    budget.begin(0, 0)
    assert plans == [1000 * 20]  # before measuring: the schedule as without a budget
    done = 0
    run_epoch(budget, done, clock, 1.0)  # 21 s an epoch
    done = 1
    # (600 - 30 - 21) / 21 = 26 more epochs
    assert budget.planned() == 1 + math.floor((600 - clock.now) / 21)
    first = budget.planned()
    while done < budget.planned() and done < 5:
        run_epoch(budget, done, clock, 1.0)
        done += 1
    assert budget.planned() == first
    while done < budget.planned():
        run_epoch(budget, done, clock, 2.0)  # half as fast from here: a shorter plan, never over the budget
        done += 1
    assert budget.planned() < first
    assert clock.now <= 600 + 41  # within one (slow) epoch of the budget
    assert clock.now >= 600 - 41
    assert plans[-1] >= 1 and all(p >= 1 for p in plans)


def test_a_budget_too_small_for_one_epoch_says_the_smallest_that_works() -> None:
    clock = Clock()
    clock.now = 50.0
    budget, _ = planner(1, clock, steps_per_epoch=100)
    with pytest.raises(ConfigError, match=r"trainer.budget=1 is too small.*smallest budget.*trainer.budget=3\b"):
        run_epoch(budget, 0, clock, 1.0, steps=100)  # 50 s spent + 100 s an epoch > 60 s


def test_the_plan_never_goes_beyond_epochs_and_a_resumed_run_keeps_what_was_spent() -> None:
    clock = Clock()
    budget, _ = planner(60, clock, max_epochs=4)
    run_epoch(budget, 0, clock, 0.1)
    assert budget.planned() == 4
    saved = budget.state()
    assert saved["spent"] == pytest.approx(clock.now) and saved["epochs"] == 4
    later = Clock()
    resumed, _ = planner(60, later, max_epochs=4, state=saved)
    later.now = 5.0
    assert resumed.spent() == pytest.approx(saved["spent"] + 5.0)  # the budget left, not a new one


def test_bad_budgets_are_refused_naming_the_key(tmp_path: Path, tiny_folder: Path) -> None:
    for value in ("0", "-3", "soon"):
        cfg = compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, f"trainer.budget={value}"))
        with pytest.raises(ConfigError, match="trainer.budget"):
            tasks.train(cfg)


def test_a_scheduler_a_budget_cannot_stretch_is_refused_before_any_image_is_read(
    tmp_path: Path, tiny_folder: Path
) -> None:
    onecycle = (
        "trainer.budget=5",
        "scheduler=cosine",
        "scheduler.factory._target_=torch.optim.lr_scheduler.OneCycleLR",
        "~scheduler.factory.T_max",
        "~scheduler.factory.eta_min",
        "+scheduler.factory.max_lr=0.01",
        "+scheduler.factory.total_steps=100",
    )
    cfg = compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, *onecycle))
    with pytest.raises(ConfigError, match=r"trainer.budget cannot stretch scheduler.factory .*OneCycleLR"):
        tasks.train(cfg)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "experiments").exists()  # refused before the data


def epochs_of(exp: Path) -> list[dict]:
    return [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_a_budgeted_run_ends_on_time_with_its_schedule_completed(tmp_path: Path, tiny_folder: Path, caplog) -> None:
    caplog.set_level("INFO")
    overrides = tiny_overrides(tmp_path, tiny_folder, "epochs=100000", "trainer.budget=0.2", "scheduler=cosine")
    # a run that ignored its budget would be stopped here (Interrupted) instead of going on for ever; a fast
    # machine fits ~170 epochs of 6 steps (0.07 s each) into the 12 s budget, so the net sits well beyond that
    tasks.train(compose_cfg("train", overrides), stop_signal=lambda: StopAfter(5000))
    exp = tmp_path / "experiments" / "tiny"
    epochs = epochs_of(exp)
    assert "budget 0.2 min: plan" in caplog.text
    payload = torch.load(exp / "last.pt", weights_only=True)
    # the run's own clock (which the plan reads; a loaded machine makes epochs slow, not the plan wrong): ended
    # by the budget, 12 s, give or take the slowest epoch (the last one may have been slower than planned)
    longest = max(e["epoch_seconds"] for e in epochs)
    assert 12.0 - 2 * longest - 1.0 <= payload["state"]["budget"]["spent"] <= 12.0 + longest + 1.0
    assert payload["state"]["budget"]["epochs"] == len(epochs) == payload["state"]["epoch"] < 100000
    assert payload["scheduler"]["progress"] == pytest.approx(1.0)  # the cosine ran to its end
    assert payload["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-9)
    # finished: the same command has nothing left to do
    tasks.train(compose_cfg("train", overrides))
    assert len(epochs_of(exp)) == len(epochs)


@pytest.mark.slow
def test_a_resumed_budgeted_run_goes_on_with_the_budget_left(tmp_path: Path, tiny_folder: Path) -> None:
    overrides = tiny_overrides(tmp_path, tiny_folder, "epochs=100000", "trainer.budget=0.2")
    with pytest.raises(Interrupted):
        tasks.train(compose_cfg("train", overrides), stop_signal=lambda: StopAfter(8))  # in the second epoch
    exp = tmp_path / "experiments" / "tiny"
    spent = torch.load(exp / "last.pt", weights_only=True)["state"]["budget"]["spent"]
    assert 0 < spent < 12
    time.sleep(1.0)  # time between the two processes does not count
    start = time.perf_counter()
    tasks.train(compose_cfg("train", overrides))
    second = time.perf_counter() - start
    state = torch.load(exp / "last.pt", weights_only=True)["state"]
    longest = max(e["epoch_seconds"] for e in epochs_of(exp))
    assert state["budget"]["spent"] <= 12 + 2 * longest + 1.0
    assert second <= 12 - spent + 2 * longest + 3.0  # the rest of the budget, not a new one


@pytest.mark.slow
def test_the_budget_of_a_command_counts_from_the_commands_start(tmp_path: Path, tiny_folder: Path) -> None:
    """python train.py: the interpreter, imports and Hydra's start are spent budget, as on the user's clock."""
    launched = time.time()
    done = run_cli("train.py", *tiny_overrides(tmp_path, tiny_folder, "epochs=3", "trainer.budget=1"))
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(
        r"\[([\d-]+ [\d:,]+)\]\[imgclf.training.budget\]\[INFO\] - budget 1 min: plan .*\((\d+) s spent\)",
        done.stdout + done.stderr,
    )
    assert found, (done.stdout + done.stderr)[-3000:]
    logged = (
        time.mktime(time.strptime(found[1].split(",")[0], "%Y-%m-%d %H:%M:%S")) + int(found[1].split(",")[1]) / 1000
    )
    assert int(found[2]) >= logged - launched - 1.5  # the plan's "spent" is the command's age (s, rounded)


def test_a_process_knows_its_age() -> None:
    before = process_age()
    time.sleep(0.3)
    assert before > 0.0 and 0.25 <= process_age() - before <= 2.0
