"""test.py's report files, calibration, and the TensorBoard figures and HParams of training."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support

import imgclf.tasks as tasks
from helpers import compose_cfg, copy_trained, make_folder, read_csv
from imgclf.cli import leaderboard
from imgclf.errors import CheckpointError
from imgclf.experiment.checkpoint import load_checkpoint, save_atomic
from imgclf.reporting import figures, statistics

REPORT_FILES = (
    "metrics.json",
    "per_class.csv",
    "confusion_matrix.csv",
    "confusion_matrix.png",
    "predictions.csv",
    "misclassified.png",
    "reliability.png",
    "report.md",
)


def tensorboard_events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    return events


def test_report_files_agree_with_each_other_and_sklearn(trained_tiny, tmp_path: Path) -> None:
    overrides, exp = copy_trained(trained_tiny, tmp_path)
    metrics = tasks.test(compose_cfg("train", overrides))
    folder = exp / "test"
    for name in REPORT_FILES:
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    written = json.loads((folder / "metrics.json").read_text())
    assert written["accuracy"] == metrics["accuracy"]

    rows = read_csv(folder / "predictions.csv")
    classes = written["classes"]
    assert len(rows) == written["samples"] == 18
    assert list(rows[0])[:6] == ["path", "true", "pred", "confidence", "top1", "p1"]
    assert all(Path(r["path"]).parent.name == r["true"] for r in rows)  # labels come from the folders
    true = [classes.index(r["true"]) for r in rows]
    pred = [classes.index(r["pred"]) for r in rows]
    assert all(r["pred"] == r["top1"] and r["confidence"] == r["p1"] for r in rows)
    assert all(float(r["p1"]) >= float(r["p2"]) for r in rows)

    cm = np.array([[int(v) for v in row[1:]] for row in list(csv.reader(open(folder / "confusion_matrix.csv")))[1:]])
    assert cm.sum() == len(rows) and cm.tolist() == written["confusion_matrix"]
    expected_cm = np.zeros_like(cm)
    for t, p in zip(true, pred, strict=True):
        expected_cm[t, p] += 1
    assert (cm == expected_cm).all()

    p, r, f, support = precision_recall_fscore_support(true, pred, labels=range(len(classes)), zero_division=0)
    per_class = {row["class"]: row for row in read_csv(folder / "per_class.csv")}
    for i, name in enumerate(classes):
        assert float(per_class[name]["precision"]) == pytest.approx(p[i], abs=1e-6)
        assert float(per_class[name]["f1"]) == pytest.approx(f[i], abs=1e-6)
        assert int(per_class[name]["support"]) == support[i]
    assert written["f1"] == pytest.approx(f.mean()) and written["recall"] == pytest.approx(r.mean())
    low, high = written["accuracy_ci"]
    assert low <= written["accuracy"] <= high and written["f1_ci"][0] <= written["f1"] <= written["f1_ci"][1]
    assert written["top_k"] == 2 and written["top_k_accuracy"] >= written["accuracy"]

    # ECE recomputed independently from the confidences in predictions.csv, binned as torchmetrics
    # does: [i/15, (i+1)/15), and a confidence of exactly 1 in a bin of its own
    conf = np.array([float(r["confidence"]) for r in rows])
    correct = np.array(true) == np.array(pred)
    bins = np.searchsorted(np.linspace(0, 1, 16), conf, side="right") - 1
    ece = sum(abs(correct[bins == b].mean() - conf[bins == b].mean()) * (bins == b).sum() for b in set(bins)) / len(
        rows
    )
    assert written["ece"] == pytest.approx(ece, abs=1e-5)

    report_md = (folder / "report.md").read_text()
    for picture in ("confusion_matrix.png", "misclassified.png", "reliability.png"):
        assert f"({picture})" in report_md


def test_test_adds_figures_and_pr_curves_to_tensorboard(trained_tiny, tmp_path: Path) -> None:
    overrides, exp = copy_trained(trained_tiny, tmp_path)
    tasks.test(compose_cfg("train", overrides))
    events = tensorboard_events(tmp_path / "runs" / exp.name)
    assert {"test/confusion_matrix", "test/misclassified", "test/reliability"} <= set(events.Tags()["images"])
    assert any(tag.startswith("test/pr/") for tag in events.Tags()["tensors"])


def test_training_logs_best_epoch_figures_and_hparams(trained_tiny) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    overrides, exp = trained_tiny
    runs = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("paths.runs=")))
    events = tensorboard_events(runs / exp.name)
    assert {"val/confusion_matrix", "val/misclassified", "val/cam_mistakes"} <= set(events.Tags()["images"])
    best_epoch = load_checkpoint(exp / "best.pt")["state"]["best_epoch"]
    assert best_epoch in [e.step for e in events.Images("val/confusion_matrix")]
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["model"].string_value == "SmallCNN" and hparams["epochs"].number_value == 3
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    assert "val/acc" in [m.name.tag for m in experiment.experiment.metric_infos]


def test_calibration_keeps_predictions_and_lowers_val_nll(trained_tiny, tmp_path: Path) -> None:
    overrides, exp = copy_trained(trained_tiny, tmp_path)
    before = tasks.test(compose_cfg("train", overrides))
    preds_before = [r["pred"] for r in read_csv(exp / "test" / "predictions.csv")]
    after = tasks.test(compose_cfg("train", [*overrides, "calibrate=true"]))
    payload = load_checkpoint(exp / "best.pt")
    assert payload["temperature"] == after["temperature"] != 1.0
    assert payload["calibration"]["nll_after"] < payload["calibration"]["nll_before"]
    assert [r["pred"] for r in read_csv(exp / "test" / "predictions.csv")] == preds_before
    assert after["accuracy"] == before["accuracy"]
    assert after["ece_uncalibrated"] == pytest.approx(before["ece"])  # the report shows both
    # a later test.py without calibrate=true uses the stored temperature
    again = tasks.test(compose_cfg("train", overrides))
    assert again["temperature"] == payload["temperature"]


@pytest.mark.slow
def test_A6_other_split_and_other_folder_get_their_own_report(trained_tiny, tmp_path: Path) -> None:
    overrides, exp = copy_trained(trained_tiny, tmp_path)
    val = tasks.test(compose_cfg("train", [*overrides, "split=val"]))
    assert val["split"] == "val" and (exp / "test_val" / "metrics.json").is_file() and val["samples"] == 18
    # a hidden test set: flat class folders, two of the three classes, evaluated whole
    hidden = make_folder(tmp_path / "hidden_set", {"x": 4}, classes=("stripes", "circle"), seed=5) / "x"
    moved = [o for o in overrides if not o.startswith("dataset.root=")]
    metrics = tasks.test(compose_cfg("train", [*moved, f"dataset.root={hidden}", "split=all"]))
    assert metrics["classes"] == ["circle", "square", "stripes"]  # from the checkpoint
    rows = read_csv(exp / "test_x" / "predictions.csv")
    assert len(rows) == 8 == metrics["samples"]
    assert all(Path(r["path"]).parent.name == r["true"] for r in rows)
    assert metrics["per_class"]["square"]["support"] == 0


@pytest.mark.slow
def test_G2_another_checkpoint_gets_its_own_report_and_never_the_experiments(trained_tiny, tmp_path: Path) -> None:
    overrides, exp = copy_trained(trained_tiny, tmp_path)
    own = tasks.test(compose_cfg("train", overrides))
    own_bytes = (exp / "test" / "metrics.json").read_bytes()
    # another model: the same network with its output rows rotated, so it predicts other classes
    payload = load_checkpoint(exp / "best.pt")
    last_weight = [k for k, v in payload["model"].items() if v.ndim == 2][-1]
    for key in (last_weight, last_weight.replace("weight", "bias")):
        payload["model"][key] = payload["model"][key].roll(1, dims=0)
    other = tmp_path / "other_model" / "best.pt"
    other.parent.mkdir()
    save_atomic(payload, other)
    foreign = tasks.test(compose_cfg("train", [*overrides, f"ckpt={other}"]))
    assert foreign["checkpoint"] == str(other.resolve()) and foreign["accuracy"] != own["accuracy"]
    assert (exp / "test" / "metrics.json").read_bytes() == own_bytes  # the experiment's own report is untouched
    written = json.loads((exp / "test_ckpt-other_model-best" / "metrics.json").read_text())
    assert written["accuracy"] == foreign["accuracy"]
    last = tasks.test(compose_cfg("train", [*overrides, "ckpt=last", "split=val"]))
    assert (exp / "test_val_ckpt-last" / "metrics.json").is_file() and not (exp / "test_val").exists()
    assert last["checkpoint"] == str((exp / "last.pt").resolve())
    with pytest.raises(CheckpointError, match="not a checkpoint of experiment"):
        tasks.test(compose_cfg("train", [*overrides, f"ckpt={other}", "calibrate=true"]))
    assert load_checkpoint(other).get("temperature") is None
    # the leaderboard shows the experiment's own numbers, and ignores a report of another checkpoint in test/
    assert leaderboard.main(["--experiments", str(exp.parent)]) == 0
    row = next(r for r in read_csv(exp.parent / "leaderboard.csv") if r["name"] == exp.name)
    assert float(row["test/acc"]) == pytest.approx(own["accuracy"], abs=1e-4)
    (exp / "test" / "metrics.json").write_text(json.dumps(written))  # as test.py wrote it before this fix
    assert leaderboard.main(["--experiments", str(exp.parent)]) == 0
    row = next(r for r in read_csv(exp.parent / "leaderboard.csv") if r["name"] == exp.name)
    assert "test/acc" not in row and "not of this experiment's best.pt" in row["notes"]


def test_temperature_fit_recovers_overconfidence() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 5, generator=generator) * 2
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=generator).flatten()  # calibrated at T=1
    overconfident = logits * 3
    temperature = statistics.fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    assert statistics.nll(overconfident, labels, temperature) < statistics.nll(overconfident, labels)
    assert torch.equal((overconfident / temperature).argmax(1), overconfident.argmax(1))
    assert statistics.reliability(torch.softmax(logits, 1), labels).ece < 0.03
    assert statistics.reliability(torch.softmax(overconfident, 1), labels).ece > 0.1


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_data() -> None:
    generator = torch.Generator().manual_seed(1)
    widths = []
    for n in (50, 2000):
        labels = torch.randint(3, (n,), generator=generator)
        preds = torch.where(torch.rand(n, generator=generator) < 0.8, labels, (labels + 1) % 3)
        ci = statistics.bootstrap_ci(preds, labels, 3, resamples=400, seed=0)
        accuracy = float((preds == labels).float().mean())
        assert ci["accuracy"][0] <= accuracy <= ci["accuracy"][1]
        assert ci == statistics.bootstrap_ci(preds, labels, 3, resamples=400, seed=0)  # reproducible
        widths.append(ci["accuracy"][1] - ci["accuracy"][0])
    assert widths[1] < widths[0] / 3


@pytest.mark.slow
def test_confusion_figure_stays_readable_with_many_classes(tmp_path: Path) -> None:
    names = [f"class_{i:03d}" for i in range(120)]
    cm = torch.randint(0, 5, (120, 120)) + torch.eye(120, dtype=torch.long) * 50
    fig = figures.confusion_figure(cm, names, "test")
    assert all(not ax.texts for ax in fig.axes)  # no per-cell numbers at 120 classes
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == names
    figures.save(fig, tmp_path / "cm.png")
    assert (tmp_path / "cm.png").stat().st_size > 0
    small = figures.confusion_figure(torch.tensor([[3, 1], [0, 4]]), ["a", "b"])
    assert len(small.axes[0].texts) == 4


def test_calibrate_at_the_end_of_training(tmp_path: Path, tiny_folder: Path) -> None:
    from helpers import tiny_overrides

    cfg = compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "calibrate=true"))
    tasks.train(cfg)
    payload = load_checkpoint(Path(cfg.paths.experiments) / "tiny" / "best.pt")
    assert payload["temperature"] > 0 and payload["calibration"]["samples"] == 18
    assert payload["calibration"]["nll_after"] <= payload["calibration"]["nll_before"]
    assert tasks.test(cfg)["temperature"] == payload["temperature"]


def test_flip_tta_averages_the_probabilities_of_image_and_mirror(trained_tiny, tmp_path: Path) -> None:
    from imgclf.models.classifier import with_tta

    overrides, exp = copy_trained(trained_tiny, tmp_path)
    plain = tasks.test(compose_cfg("train", overrides))
    probs = {row["path"]: float(row["p1"]) for row in read_csv(exp / "test" / "predictions.csv")}
    flipped = tasks.test(compose_cfg("train", [*overrides, "tta=flip"]))
    assert flipped["tta"] == "flip" and "test-time augmentation: flip" in (exp / "test" / "report.md").read_text()
    assert flipped["loss"] != plain["loss"] and flipped["samples"] == plain["samples"]
    changed = [row for row in read_csv(exp / "test" / "predictions.csv") if float(row["p1"]) != probs[row["path"]]]
    assert changed  # the mirror images moved the probabilities

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    images = torch.randn(5, 3, 4, 4)
    expected = (torch.softmax(model(images), 1) + torch.softmax(model(images.flip(-1)), 1)) / 2
    torch.testing.assert_close(torch.softmax(with_tta(model, "flip")(images), 1), expected)
    assert with_tta(model, "none") is model
