"""Issue 27, ordinary inputs to predict.py and the other command-line programs: a reader that closes the
pipe early (J6), class names that could be indices (J16), and `~` in paths and Hydra overrides (J17)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, copy_trained, read_csv

PIPE_BUFFER = 64 * 1024  # Linux's default pipe capacity


@pytest.fixture
def trained(trained_tiny: tuple[list[str], Path], tmp_path: Path) -> tuple[list[str], Path]:
    return copy_trained(trained_tiny, tmp_path)


def data_root(overrides: list[str]) -> Path:
    return Path(next(o for o in overrides if o.startswith("dataset.root=")).split("=", 1)[1])


def test_J6_closed_stdout_keeps_the_output_file_whole_and_exits_like_unix_tools(trained, tmp_path) -> None:
    overrides, exp = trained
    image = next((data_root(overrides) / "test").rglob("*.png"))
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(600):  # long names: a table of ~600 * 200 bytes, well over a pipe's buffer
        shutil.copy(image, folder / f"{i:04d}_{'a_long_file_name_' * 9}.png")
    out = tmp_path / "p.csv"
    proc = subprocess.Popen([sys.executable, str(ROOT / "predict.py"), str(folder), "--checkpoint",
                             str(exp / "best.pt"), "--output", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("file ")  # the table's header: then the reader leaves, as head does
    proc.stdout.close()
    err = proc.stderr.read()
    code = proc.wait(timeout=300)

    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err
    assert code == 141, err  # 128 + SIGPIPE: what the shell reports for cat or grep in the same place
    rows = read_csv(out)
    assert len(rows) == 600 and all(r["error"] == "" and r["pred"] for r in rows)
    assert sum(len(r["path"]) for r in rows) > 2 * PIPE_BUFFER
    assert f"wrote {out}" in err and "600 image(s) classified" in err
