"""docs/reliability.md J5, J7, J8 (scores): test.py's calibration against a training run of the same experiment, its
report on a full disk, and macro scores over a split that lacks a class."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_recall_fscore_support, recall_score

import imgclf.tasks as tasks
from helpers import CLASSES, ROOT, compose_cfg, copy_trained, make_folder, read_csv, tiny_overrides
from imgclf.errors import CheckpointError, ExperimentError
from imgclf.experiment.checkpoint import load_checkpoint, save_atomic
from imgclf.reporting import report
from imgclf.reporting.metrics import summarize
from imgclf.reporting.outputs import Outputs
from imgclf.training.validation import validate

# --- J5: calibration never rolls best.pt back ------------------------------------------------------------------

HOLD_LOCK = """
import sys
from pathlib import Path
from imgclf.experiment.folder import ExperimentLock
with ExperimentLock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()  # held until the test closes our stdin
"""


@pytest.mark.slow
def test_J5_calibration_is_refused_while_another_process_holds_the_experiment(trained_tiny, tmp_path: Path) -> None:
    overrides, exp = copy_trained(trained_tiny, tmp_path, "report.bootstrap=0", "calibrate=true")
    before = (exp / "best.pt").read_bytes()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(exp / ".lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"  # a training run of the experiment, as far as a lock goes
        with pytest.raises(
            ExperimentError,
            match=rf"in use by process {holder.pid} .*calibrate=true writes the "
            r"experiment's checkpoint: wait for that run to finish",
        ):
            tasks.test(compose_cfg("train", overrides))
        assert (exp / "best.pt").read_bytes() == before
    finally:
        holder.communicate(input="", timeout=60)
    assert holder.returncode == 0
    tasks.test(compose_cfg("train", overrides))  # once it is done, calibration goes ahead
    assert load_checkpoint(exp / "best.pt")["calibration"]["split"] == "val"


class ReplacesBestPt(torch.nn.CrossEntropyLoss):
    """The loss of a test.py run (``loss._target_=test_j_test_report.ReplacesBestPt +loss.best=PATH``) that, at its
    first batch, saves a newer ``best.pt`` the way a training run does: after test.py read it, before it writes."""

    def __init__(self, best: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.best, self.done = Path(best), False

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not self.done:
            newer = load_checkpoint(self.best)
            newer["state"]["epoch"] = 99
            save_atomic(newer, self.best)
            self.done = True
        return super().forward(logits, labels)


def test_J5_a_best_pt_replaced_between_load_and_save_is_not_overwritten(trained_tiny, tmp_path: Path) -> None:
    overrides, exp = copy_trained(trained_tiny, tmp_path, "report.bootstrap=0", "calibrate=true")
    overrides += [f"loss._target_={__name__}.ReplacesBestPt", f"+loss.best={exp / 'best.pt'}"]
    with pytest.raises(CheckpointError, match=r"best.pt was replaced after this run read it .* nothing was written"):
        tasks.test(compose_cfg("train", overrides))
    kept = load_checkpoint(exp / "best.pt")
    assert kept["state"]["epoch"] == 99 and "temperature" not in kept  # the newer one, not rolled back
    assert not (exp / ".lock").exists()  # released


# --- J7: the report folder is all old or all new ----------------------------------------------------------------

LIMITED = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
sys.argv = sys.argv[2:]
runpy.run_path("test.py", run_name="__main__")
"""


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("fails", ["report", pytest.param("tensorboard", marks=pytest.mark.slow)])
@pytest.mark.slow
def test_J7_disk_full_while_writing_the_report_keeps_the_old_report_whole(
    trained_tiny, tmp_path: Path, fails: str
) -> None:
    overrides, exp = copy_trained(trained_tiny, tmp_path, "report.bootstrap=0")
    runs = tmp_path / "runs" / exp.name
    tasks.test(compose_cfg("train", overrides))  # then again with other numbers (tta=flip): no file the same
    old, events = snapshot(exp / "test"), snapshot(runs)
    # over Hydra's records of the run (a few kB) but under a figure, or over every report file but under the
    # TensorBoard file (its figures and PR curves)
    limit = 8_000 if fails == "report" else max(map(len, old.values())) + 1
    assert max(map(len, old.values())) > 8_000 and max(map(len, events.values())) > limit
    done = subprocess.run(
        [sys.executable, "-c", LIMITED, str(limit), "test.py", *overrides, "tta=flip"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    said = done.stdout + done.stderr
    assert done.returncode == 1, said[-3000:]
    assert "Traceback" not in said and "Exception in thread" not in said, said[-3000:]
    named = exp / "test" if fails == "report" else runs
    assert f"ReportError: could not write {named}: File too large" in said, said[-3000:]
    assert "MiB free in" in said and f"{exp / 'test'} is left as it was" in said
    assert snapshot(exp / "test") == old  # every old file intact: none of this run's beside them
    assert snapshot(runs) == events  # and no torn or partial event file
    assert not [p.name for p in (*exp.iterdir(), *runs.iterdir()) if p.name.startswith((".staging-", ".tmp-"))]


def test_J7_what_a_killed_report_write_left_is_cleaned_or_put_back(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)  # a process that has exited
    half = tmp_path / f".staging-test.{pid}.abc123"  # killed while writing the new report
    old = tmp_path / f".staging-test_val.{pid}.old-0f0f"  # killed between moving the old report aside and the new in
    mine = tmp_path / f".staging-test_x.{os.getpid()}.def456"  # a live writer's: left alone
    for folder in (half, old, mine):
        folder.mkdir()
        (folder / "metrics.json").write_text(folder.name)
    logits, labels = torch.eye(3).repeat(2, 1), torch.arange(3).repeat(2)
    info = {"split": "test", "checkpoint": "best.pt", "epoch": 1, "data_root": "data", "experiment": "tiny"}
    result = report.SplitResult(
        Outputs(0.5, logits, labels),
        list(CLASSES),
        [f"{i}.png" for i in range(6)],
        lambda i: np.zeros((8, 8, 3), np.uint8),
        info,
    )
    report.write(tmp_path / "test", result, bootstrap=0)  # the next report written there cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, "test", "test_val"])
    assert (tmp_path / "test_val" / "metrics.json").read_text() == old.name  # the old report, back in place
    assert json.loads((tmp_path / "test" / "metrics.json").read_text())["accuracy"] == 1.0


# --- J8: macro scores over the classes present --------------------------------------------------------------------


def test_J8_macro_scores_average_only_the_classes_present_and_say_which(trained_tiny, tmp_path: Path, caplog) -> None:
    overrides, exp = copy_trained(trained_tiny, tmp_path, "report.bootstrap=200")
    other = make_folder(tmp_path / "other", {"train": 2, "test": 4}, seed=5)
    shutil.rmtree(other / "test" / "stripes")  # no images of one class in the evaluated split
    with caplog.at_level(logging.WARNING):
        metrics = tasks.test(compose_cfg("train", [*overrides, f"dataset.root={other}"]))
    folder = exp / "test_other"
    rows = read_csv(folder / "predictions.csv")
    true, pred = [CLASSES.index(r["true"]) for r in rows], [CLASSES.index(r["pred"]) for r in rows]
    assert 2 not in true and len(rows) == 8
    present = [0, 1]
    by_hand = f1_score(true, pred, labels=present, average="macro", zero_division=0)
    per_class_f1 = precision_recall_fscore_support(true, pred, labels=range(3), zero_division=0)[2]
    assert by_hand == pytest.approx(per_class_f1[present].mean())  # sklearn's labels= is the mean over present
    written = json.loads((folder / "metrics.json").read_text())
    assert written["f1"] == metrics["f1"] == pytest.approx(by_hand, abs=1e-12)
    assert written["recall"] == pytest.approx(recall_score(true, pred, labels=present, average="macro"), abs=1e-12)
    assert written["absent_classes"] == ["stripes"] and written["macro_average_over"] == ["circle", "square"]
    assert written["f1_ci"][0] <= written["f1"] <= written["f1_ci"][1]  # the interval is of the same average
    assert "average the 2 classes present; no images of stripes in this split" in (folder / "report.md").read_text()
    assert any("no images of stripes" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_J8_val_f1_averages_the_classes_in_val(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(30, 4), torch.tensor([0, 1] * 15)  # class 2 has no val image (it may be predicted)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    metrics, outputs = validate(model, loader, torch.nn.CrossEntropyLoss(), device=torch.device("cpu"), num_classes=3)
    pred = outputs.logits.argmax(1)
    assert metrics["val/f1"] == pytest.approx(
        f1_score(y, pred, labels=[0, 1], average="macro", zero_division=0), abs=1e-12
    )
    assert summarize(outputs.logits, y, 3)["absent_classes"] == [2]


def test_J8_training_says_when_val_lacks_a_class(tmp_path: Path, caplog) -> None:
    root = make_folder(tmp_path / "data", {"train": 8, "val": 3})
    shutil.rmtree(root / "val" / "stripes")
    with caplog.at_level(logging.WARNING):
        tasks.train(compose_cfg("train", tiny_overrides(tmp_path, root, "epochs=1")))
    assert "the val split has no images of stripes: val/f1 averages the 2 other classes" in caplog.text
