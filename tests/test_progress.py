"""Progress reads well in a log file (issue 28): tqdm bars on a terminal only; elsewhere a plain line at each
tenth of a long task and none for a short one, so `> train.out` holds no carriage-return frames."""

from __future__ import annotations

import logging

import pytest
from tqdm import tqdm

from helpers import make_folder, run_cli, tiny_overrides
from imgclf import progress as progress_module
from imgclf.progress import LineProgress, progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_long_task_logs_a_line_at_each_tenth(caplog):
    clock = Clock()
    bar = LineProgress(total=200, desc="train", unit="batch", clock=clock)
    with caplog.at_level(logging.INFO, logger="imgclf.progress"):
        for _ in range(200):
            clock.now += 0.2  # 40 s in all
            bar.update(1)
        bar.set_postfix(loss="0.1234")
    lines = [r.getMessage() for r in caplog.records]
    # tenths 30..90% (10% and 20% came before QUIET_SECONDS); never one at 100%: the epoch's summary follows
    assert [line.split(" (")[1].split(")")[0] for line in lines] == ["30%", "40%", "50%", "60%", "70%", "80%", "90%"]
    assert lines[0].startswith("train: 60/200 batch") and "5.0 batch/s" in lines[0]


def test_a_slow_task_says_seconds_per_item(caplog):
    clock = Clock()
    bar = LineProgress(total=5, desc="test", unit="batch", clock=clock)
    with caplog.at_level(logging.INFO, logger="imgclf.progress"):
        for _ in range(5):
            clock.now += 30
            bar.update(1)
    assert caplog.records[0].getMessage() == "test: 1/5 batch (20%), 30.0 s/batch"


def test_a_short_task_logs_nothing(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="imgclf.progress"):
        for _ in LineProgress(range(50), desc="val", clock=clock):
            clock.now += 0.1  # 5 s
    assert caplog.records == []


def test_a_bar_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr(progress_module, "on_terminal", lambda: True)
    assert isinstance(progress(range(3), desc="x"), tqdm)
    monkeypatch.setattr(progress_module, "on_terminal", lambda: False)
    assert isinstance(progress(range(3), desc="x"), LineProgress)
    assert list(progress(range(3), desc="x")) == [0, 1, 2]


@pytest.mark.slow
def test_train_py_writes_no_carriage_returns_into_a_redirected_log(tmp_path):
    root = make_folder(tmp_path / "data", {"train": 12, "val": 4, "test": 4})
    overrides = [o for o in tiny_overrides(tmp_path, root) if o != "progress=false"] + ["progress=true"]
    result = run_cli("train.py", *overrides)  # stdout and stderr are pipes, as with > train.out
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "\r" not in output and "%|" not in output  # no bar frames, with or without carriage returns
    assert "epoch 2/2" in output


def test_pretrained_lite_backbones_print_nothing(capsys):
    from imgclf.models.efficientnet_lite import LiteFeatures

    LiteFeatures("lite0", pretrained=True)
    assert "Loaded pretrained weights" not in capsys.readouterr().out  # the library's print, once per backbone
