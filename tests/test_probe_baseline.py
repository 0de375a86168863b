"""benchmarks/probe_baseline.py: the frozen Lite0 + logistic regression baseline beside imgclf's accuracy."""

from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path

import pytest

import imgclf.tasks as tasks
from helpers import ROOT, compose_cfg, copy_trained, run_cli

SCRIPT = "benchmarks/probe_baseline.py"


def run_in_process(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    """``python benchmarks/probe_baseline.py args...`` without a new interpreter's start-up."""
    monkeypatch.setattr(sys, "argv", [SCRIPT, *args])
    runpy.run_path(str(ROOT / SCRIPT), run_name="__main__")


@pytest.mark.slow
def test_baseline_beside_the_experiments_own_accuracy(
    trained_tiny: tuple[list[str], Path], tiny_folder: Path, tmp_path: Path
) -> None:
    overrides, exp = copy_trained(trained_tiny, tmp_path)
    tasks.test(compose_cfg("train", overrides))
    recorded = json.loads((exp / "test" / "metrics.json").read_text())

    out = tmp_path / "probe.json"
    done = run_cli(SCRIPT, str(tiny_folder), "--experiment", str(exp), "--json", str(out))
    assert done.returncode == 0, done.stderr
    row = json.loads(out.read_text())["rows"][0]
    assert row["baseline_accuracy"] >= 0.9  # circles, squares and stripes in three colours
    assert row["imgclf_accuracy"] == recorded["accuracy"]
    assert row["test_images"] == recorded["samples"] == 18
    assert f"{row['baseline_accuracy']:.4f}" in done.stdout


def test_missing_folder_or_metrics_is_one_line_naming_it(
    tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no_such_folder"
    with pytest.raises(SystemExit, match=re.escape(f"{missing} is not a folder")):
        run_in_process(monkeypatch, str(missing))
    with pytest.raises(SystemExit, match="metrics.json not found"):
        run_in_process(monkeypatch, str(tiny_folder), "--experiment", str(tmp_path))
