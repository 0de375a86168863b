"""End to end in-process: files written, values read back, resume, and results never lost."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import DictConfig

import imgclf.tasks as tasks
from helpers import CLASSES, StopAfter, compose_cfg, make_folder, tiny_overrides
from imgclf.errors import DataError, ExperimentError
from imgclf.experiment.checkpoint import load_checkpoint
from imgclf.experiment.run_log import read_metrics
from imgclf.training.state import Interrupted

EPOCH_KEYS = {
    "epoch",
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "val/f1",
    "lr",
    "epoch_seconds",
    "train/images_per_s",
    "train/skipped_steps",
}


def read_tensorboard(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def exp_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.experiments) / cfg.experiment


def test_train_then_test_writes_every_file(tiny_cfg: DictConfig, tiny_folder: Path) -> None:
    best = tasks.train(tiny_cfg)
    exp = exp_dir(tiny_cfg)
    for name in ("best.pt", "last.pt", "metrics.jsonl", "config.yaml", "splits.csv"):
        assert (exp / name).is_file(), name
    records = read_metrics(exp / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(set(r) == EPOCH_KEYS for r in records)
    assert best == max(r["val/acc"] for r in records)
    scalars = read_tensorboard(Path(tiny_cfg.paths.runs) / "tiny")
    assert set(EPOCH_KEYS - {"epoch"}) <= set(scalars)
    assert [step for step, _ in scalars["val/acc"]] == [1, 2]
    assert [value for _, value in scalars["val/acc"]] == pytest.approx([r["val/acc"] for r in records])

    ckpt = torch.load(exp / "best.pt", weights_only=True, map_location="cpu")
    assert ckpt["class_names"] == ["circle", "square", "stripes"]
    assert ckpt["image_size"] == 16 and ckpt["mean"] == list(tiny_cfg.dataset.mean)
    assert ckpt["config"]["dataset"]["num_classes"] == 3  # filled in from the data, written back
    assert ckpt["state"]["best"] == best and set(ckpt["rng"]) >= {"python", "numpy", "torch"}
    assert {"optimizer", "scheduler", "versions"} <= set(ckpt)

    metrics = tasks.test(tiny_cfg)
    written = json.loads((exp / "test" / "metrics.json").read_text())
    assert written["samples"] == 18 == sum(written["per_class"][c]["support"] for c in written["classes"])
    for key in ("accuracy", "precision", "recall", "f1", "precision_weighted", "recall_weighted", "f1_weighted"):
        assert 0.0 <= written[key] <= 1.0 and written[key] == metrics[key]
    cm = torch.tensor(written["confusion_matrix"])
    assert cm.sum() == 18 and written["accuracy"] == pytest.approx(float(cm.diag().sum()) / 18)


def test_metrics_agree_with_sklearn() -> None:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    from imgclf.reporting.metrics import summarize

    g = torch.Generator().manual_seed(0)
    labels, preds = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 4, (200,), generator=g)
    preds[:5] = 3  # some imbalance
    ours = summarize(torch.nn.functional.one_hot(preds, 4).float(), labels, 4)  # logits whose argmax is preds
    assert ours["accuracy"] == pytest.approx(accuracy_score(labels, preds))
    for average, suffix in (("macro", ""), ("weighted", "_weighted")):
        p, r, f, _ = precision_recall_fscore_support(labels, preds, average=average, zero_division=0)
        assert (ours["precision" + suffix], ours["recall" + suffix], ours["f1" + suffix]) == pytest.approx((p, r, f))


def test_G5_a_finished_experiment_is_not_overwritten(tiny_cfg: DictConfig, caplog) -> None:
    first = tasks.train(tiny_cfg)
    best = exp_dir(tiny_cfg) / "best.pt"
    stamp = best.stat().st_mtime_ns
    assert tasks.train(tiny_cfg) == first
    assert best.stat().st_mtime_ns == stamp and "already finished" in caplog.text
    assert len(read_metrics(exp_dir(tiny_cfg) / "metrics.jsonl")) == 2

    never = compose_cfg(
        "train", [*tiny_overrides(Path(tiny_cfg.paths.experiments).parent, Path(tiny_cfg.dataset.root)), "resume=never"]
    )
    with pytest.raises(ExperimentError, match="overwrite=true"):
        tasks.train(never)
    assert best.stat().st_mtime_ns == stamp


def test_overwrite_starts_over_and_more_epochs_continue(tmp_path: Path, tiny_folder: Path) -> None:
    tasks.train(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder)))
    longer = compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "epochs=3"))
    tasks.train(longer)
    assert [r["epoch"] for r in read_metrics(exp_dir(longer) / "metrics.jsonl")] == [1, 2, 3]
    tasks.train(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "overwrite=true")))
    assert [r["epoch"] for r in read_metrics(exp_dir(longer) / "metrics.jsonl")] == [1, 2]


def test_G5_overwrite_checks_the_new_data_before_deleting_anything(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "photos", {"train": 6, "val": 2, "test": 2})
    cfg = compose_cfg("train", tiny_overrides(tmp_path, folder, "epochs=1"))
    tasks.train(cfg)
    exp = exp_dir(cfg)
    kept = {p.relative_to(exp): p.read_bytes() for p in exp.rglob("*") if p.is_file() and ".hydra" not in p.parts}
    runs = Path(cfg.paths.runs) / cfg.experiment
    assert {"best.pt", "last.pt", "metrics.jsonl", "splits.csv", "config.yaml"} <= {p.name for p in kept}
    assert any(runs.rglob("events.out.tfevents*"))
    (folder / "train" / CLASSES[0] / "junk.jpg").write_text("not an image")  # the new run's data is bad
    with pytest.raises(DataError, match="junk.jpg"):
        tasks.train(compose_cfg("train", tiny_overrides(tmp_path, folder, "epochs=1", "overwrite=true")))
    for name, data in kept.items():  # nothing of the old run was deleted
        assert (exp / name).read_bytes() == data, name
    assert any(runs.rglob("events.out.tfevents*"))
    (folder / "train" / CLASSES[0] / "junk.jpg").unlink()
    tasks.train(compose_cfg("train", tiny_overrides(tmp_path, folder, "epochs=2", "overwrite=true")))
    assert [r["epoch"] for r in read_metrics(exp / "metrics.jsonl")] == [1, 2]


@pytest.mark.parametrize("stop_after", [5, 6])  # mid-epoch, and exactly at the end of epoch 1 (6 batches)
def test_D5_C9_resume_equals_an_uninterrupted_run(tmp_path: Path, tiny_folder: Path, stop_after: int) -> None:
    extra = ("epochs=3", "augmentation=flip", "model.dropout=0.3")  # random augmentation and dropout
    whole = compose_cfg("train", tiny_overrides(tmp_path / "a", tiny_folder, *extra))
    tasks.train(whole)

    parts = compose_cfg("train", tiny_overrides(tmp_path / "b", tiny_folder, *extra))
    with pytest.raises(Interrupted) as exit_info:
        tasks.train(parts, stop_signal=lambda: StopAfter(stop_after))
    assert exit_info.value.exit_code == 143
    interrupted = load_checkpoint(exp_dir(parts) / "last.pt")["state"]
    assert (interrupted["epoch"], interrupted["step"]) == (0, stop_after)  # 48 images / 8 = 6 batches
    tasks.train(compose_cfg("train", tiny_overrides(tmp_path / "b", tiny_folder, *extra)))

    a = load_checkpoint(exp_dir(whole) / "last.pt")
    b = load_checkpoint(exp_dir(parts) / "last.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert read_metrics(exp_dir(whole) / "metrics.jsonl") != []
    strip = lambda rs: [{k: v for k, v in r.items() if "seconds" not in k and "per_s" not in k} for r in rs]  # noqa
    assert strip(read_metrics(exp_dir(whole) / "metrics.jsonl")) == strip(
        read_metrics(exp_dir(parts) / "metrics.jsonl")
    )
    curve = read_tensorboard(Path(parts.paths.runs) / "tiny")["val/acc"]
    assert [step for step, _ in curve] == [1, 2, 3]  # one point per epoch across the two processes


def test_D6_resume_refuses_a_changed_model_size_data_or_classes(tmp_path: Path, caplog) -> None:
    folder = make_folder(tmp_path / "photos", {"train": 6, "val": 2, "test": 2})
    cfg = compose_cfg("train", tiny_overrides(tmp_path, folder, "epochs=3"))
    with pytest.raises(Interrupted):
        tasks.train(cfg, stop_signal=lambda: StopAfter(2))
    last = exp_dir(cfg) / "last.pt"
    stamp = last.read_bytes()
    other = make_folder(tmp_path / "other", {"train": 6, "val": 2, "test": 2}, seed=3)
    for change, refused in (
        ("model.width=8", r"model.*width"),
        ("dataset.image_size=24", r"dataset.image_size: 16 -> 24"),
        (f"dataset.root={other}", r"dataset.root: .*photos.* -> .*other"),
    ):
        with pytest.raises(ExperimentError, match=refused):
            tasks.train(compose_cfg("train", tiny_overrides(tmp_path, folder, "epochs=3", change)))
    make_folder(folder, {"train": 6, "val": 2, "test": 2}, classes=("zigzag",), seed=9)  # a class was added
    with pytest.raises(ExperimentError, match=r"classes: .* -> .*zigzag"):
        tasks.train(compose_cfg("train", tiny_overrides(tmp_path, folder, "epochs=3")))
    assert last.read_bytes() == stamp  # nothing was written by a refused resume
    (
        shutil.rmtree(folder / "train" / "zigzag"),
        shutil.rmtree(folder / "val" / "zigzag"),
        shutil.rmtree(folder / "test" / "zigzag"),
    )
    tasks.train(compose_cfg("train", tiny_overrides(tmp_path, folder, "epochs=2", "optimizer.lr=0.002")))
    assert "epochs: 3 -> 2" in caplog.text and "optimizer.lr: 0.001 -> 0.002" in caplog.text


def test_G6_resume_warns_about_every_changed_setting_and_keeps_the_config_history(tmp_path: Path, caplog) -> None:
    folder = make_folder(tmp_path / "photos", {"train": 6, "val": 2, "test": 2})
    cfg = compose_cfg("train", tiny_overrides(tmp_path, folder, "epochs=2"))
    with pytest.raises(Interrupted):
        tasks.train(cfg, stop_signal=lambda: StopAfter(2))
    exp = exp_dir(cfg)
    stopped = load_checkpoint(exp / "last.pt")["state"]
    resumed_at = f"epoch-{stopped['epoch']}-step-{stopped['step']}.yaml"
    changes = (
        "augmentation=flip",
        "batch_mix=mixup",
        "imbalance=weighted_loss",
        "loss.label_smoothing=0.1",
        "trainer.clip_grad_norm=1.0",
    )
    tasks.train(compose_cfg("train", tiny_overrides(tmp_path, folder, "epochs=2", *changes)))
    warning = next(r.getMessage() for r in caplog.records if "changed setting" in r.getMessage())
    for expected in (
        "imbalance: 'none' -> 'weighted_loss'",
        "loss.label_smoothing: 0.0 -> 0.1",
        "trainer.clip_grad_norm: None -> 1.0",
        "batch_mix._target_: None -> ",
        "augmentation.train",
    ):
        assert expected in warning, expected
    history = sorted(p.name for p in (exp / "config_history").glob("*.yaml"))
    assert history == ["epoch-0-step-0.yaml", resumed_at] and resumed_at == "epoch-0-step-2.yaml"
    first, second = (yaml.safe_load((exp / "config_history" / name).read_text()) for name in history)
    assert first["imbalance"] == "none" and first["loss"]["label_smoothing"] == 0.0  # what ran before the resume
    assert second["imbalance"] == "weighted_loss" and second["loss"]["label_smoothing"] == 0.1
    assert yaml.safe_load((exp / "config.yaml").read_text()) == second  # config.yaml: the latest
    tasks.train(compose_cfg("train", tiny_overrides(tmp_path, folder, "epochs=2", "overwrite=true")))
    assert sorted(p.name for p in (exp / "config_history").glob("*.yaml")) == ["epoch-0-step-0.yaml"]


def test_C8_a_busy_experiment_refuses_a_second_run(tiny_cfg: DictConfig) -> None:
    import fcntl

    exp = exp_dir(tiny_cfg)
    exp.mkdir(parents=True)
    with open(exp / ".lock", "w") as held:  # another run holds it: locked, its pid inside
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(str(os.getppid()))
        held.flush()
        with pytest.raises(ExperimentError, match=f"in use by process {os.getppid()}"):
            tasks.train(tiny_cfg)
    assert (exp / ".lock").read_text() == str(os.getppid())  # the refused run left it alone
    (exp / ".lock").write_text(str(os.getppid()))  # a live pid in a file nobody locks: left by a run that died
    tasks.train(tiny_cfg)
    assert not (exp / ".lock").exists()


def test_D1_unreadable_last_checkpoint_falls_back_to_best(tmp_path: Path, tiny_folder: Path, caplog) -> None:
    cfg = compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "epochs=3"))
    with pytest.raises(Interrupted):  # in epoch 2, after best.pt of epoch 1
        tasks.train(cfg, stop_signal=lambda: StopAfter(8))
    (exp_dir(cfg) / "last.pt").write_bytes(b"torn")
    tasks.train(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "epochs=3")))
    assert "resuming from" in caplog.text and "best.pt" in caplog.text
    assert load_checkpoint(exp_dir(cfg) / "last.pt")["state"]["epoch"] == 3


def test_same_seed_gives_identical_weights_with_deterministic(tmp_path: Path, tiny_folder: Path) -> None:
    extra = ("deterministic=true", "augmentation=flip", "epochs=1")
    a = compose_cfg("train", tiny_overrides(tmp_path / "a", tiny_folder, *extra))
    b = compose_cfg("train", tiny_overrides(tmp_path / "b", tiny_folder, *extra))
    c = compose_cfg("train", tiny_overrides(tmp_path / "c", tiny_folder, *extra, "seed=7"))
    for cfg in (a, b, c):
        tasks.train(cfg)
    weights = [load_checkpoint(exp_dir(cfg) / "last.pt")["model"] for cfg in (a, b, c)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    torch.use_deterministic_algorithms(False)


def test_loader_workers_train_the_same_pipeline(tmp_path: Path, tiny_folder: Path) -> None:
    cfg = compose_cfg(
        "train", tiny_overrides(tmp_path, tiny_folder, "loader.num_workers=2", "epochs=1", "augmentation=flip_rotate")
    )
    best = tasks.train(cfg)
    assert best is not None and len(read_metrics(exp_dir(cfg) / "metrics.jsonl")) == 1


def test_C9_resumed_log_drops_epochs_after_the_checkpoint(tmp_path: Path) -> None:
    from imgclf.experiment.run_log import RunLog

    first = RunLog(tmp_path / "metrics.jsonl", tmp_path / "tb")
    for epoch in (1, 2, 3):  # epochs 2 and 3 were logged, but the process died before saving them
        first.write(epoch, {"val/acc": 0.1 * epoch})
    first.close()
    resumed = RunLog(tmp_path / "metrics.jsonl", tmp_path / "tb", start_epoch=1)
    for epoch in (2, 3):
        resumed.write(epoch, {"val/acc": 0.5 + epoch})
    resumed.close()
    assert [(r["epoch"], r["val/acc"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [
        (1, 0.1),
        (2, 2.5),
        (3, 3.5),
    ]
    curve = read_tensorboard(tmp_path / "tb")["val/acc"]
    assert [(s, round(v, 4)) for s, v in curve] == [(1, 0.1), (2, 2.5), (3, 3.5)]


def test_a_seed_of_any_size_trains(tmp_path: Path, tiny_folder: Path) -> None:
    # the batch order and augmentation seeds are derived from `seed`; torch takes seeds below 2**64 only
    for seed in (123_456_789, 2**62):
        overrides = tiny_overrides(tmp_path, tiny_folder, "epochs=1", f"seed={seed}", f"experiment=seed{seed}")
        tasks.train(compose_cfg("train", [*overrides, "augmentation=flip"]))
        assert (tmp_path / "experiments" / f"seed{seed}" / "best.pt").exists()
