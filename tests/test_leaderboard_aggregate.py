"""imgclf-leaderboard merges runs that differ only in fold or seed into one row of mean ± std (issue 29).

The experiment folders are written by hand (config.yaml, metrics.jsonl, test/metrics.json, and a .hydra
record where a test needs one): the leaderboard reads only files, so no run is trained here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from helpers import read_csv
from imgclf.cli import leaderboard

FOLDS, SEEDS = 5, (0, 1, 2)
MEMBER = "↳ "


def config(seed: int, fold: int, lr: float = 0.01, **dataset: Any) -> dict[str, Any]:
    """A config.yaml as train.py saves it, cut to the keys a leaderboard compares."""
    return {
        "dataset": {
            "_target_": "imgclf.data.folder.FolderSource",
            "root": "/data/photos",
            "image_size": 64,
            "folds": FOLDS,
            "fold": fold,
            "split_seed": 0,
            **dataset,
        },
        "model": {"_target_": "imgclf.models.small_cnn.SmallCNN", "num_classes": 3, "width": 32},
        "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": lr},
        "experiment": "cv",
        "seed": seed,
        "epochs": 3,
        "monitor": "val/acc",
        "mode": "max",
        "paths": {"experiments": "experiments"},
    }


def write_run(
    folder: Path, cfg: dict[str, Any], val_acc: list[float], test_acc: float | None, requested: dict | None = None
) -> Path:
    """An experiment folder: val/acc of epoch i is ``val_acc[i]``; a test report when ``test_acc`` is given;
    a .hydra record holding ``requested`` (the config as composed) when given."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    records = [{"epoch": e, "val/acc": acc, "epoch_seconds": 2.0} for e, acc in enumerate(val_acc, 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if test_acc is not None:
        (folder / "test").mkdir()
        (folder / "test" / "metrics.json").write_text(json.dumps({"accuracy": test_acc, "f1": test_acc - 0.05}))
    if requested is not None:
        record = folder / ".hydra" / "train" / "2026-01-01_00-00-00"
        record.mkdir(parents=True)
        choices = {"dataset": "image_folder", "model": "small_cnn", "hydra/launcher": "basic"}
        (record / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
        (record / "config.yaml").write_text(yaml.safe_dump(requested))
    return folder


def known_values(n: int, seed: int = 29) -> tuple[np.ndarray, np.ndarray]:
    """Per run: three epochs' val/acc and a test accuracy, drawn once so every number is known here."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.4, 0.95, size=(n, 3)).round(6), rng.uniform(0.5, 0.95, size=n).round(6)


def cross_validation(root: Path, lr: float = 0.01, prefix: str = "cv") -> tuple[np.ndarray, np.ndarray]:
    """5 folds x 3 seeds of one config under ``root/<prefix>_s<seed>_f<fold>``; their best val/acc and test
    accuracies, computed here."""
    val, test = known_values(FOLDS * len(SEEDS), seed=int(lr * 1000))
    runs = [(seed, fold) for seed in SEEDS for fold in range(FOLDS)]
    for (seed, fold), epochs, acc in zip(runs, val, test, strict=True):
        write_run(root / f"{prefix}_s{seed}_f{fold}", config(seed, fold, lr), list(epochs), float(acc))
    return val.max(axis=1), test


def mean_std(values: np.ndarray) -> str:
    """The cell a merged row must show, from numpy: mean ± sample standard deviation (ddof=1)."""
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def board(root: Path, *args: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Run the leaderboard; its markdown rows and its CSV rows, each as dicts by column."""
    assert leaderboard.main(["--experiments-dir", str(root), *args]) == 0
    lines = [line for line in (root / "leaderboard.md").read_text().splitlines() if line.startswith("|")]
    table = [[cell.strip() for cell in line.strip()[1:-1].split("|")] for line in lines[:1] + lines[2:]]
    return [dict(zip(table[0], row, strict=True)) for row in table[1:]], read_csv(root / "leaderboard.csv")


def test_five_folds_times_three_seeds_read_as_one_row_of_mean_and_sample_std(tmp_path: Path) -> None:
    root = tmp_path / "experiments"
    best, test = cross_validation(root)
    markdown, rows = board(root)

    merged = markdown[0]
    assert merged["name"] == "cv_s*" and merged["runs"] == "15"
    assert merged["best val/acc"] == mean_std(best)
    assert merged["test/acc"] == mean_std(test)
    assert merged["test/f1"] == mean_std(test - 0.05)
    assert merged["seed"] == "0, 1, 2" and merged["dataset.fold"] == "0, 1, 2, 3, 4"
    # the runs it merges are listed below it, best first
    members = markdown[1:16]
    assert all(row["name"].startswith(MEMBER) and row["runs"] == "" for row in members)
    assert [float(row["best val/acc"]) for row in members] == sorted((float(f"{b:.4f}") for b in best), reverse=True)

    # the CSV: mean and std as numbers of their own, every run with the merged row it belongs to
    top = rows[0]
    assert (top["name"], top["group"], top["runs"]) == ("cv_s*", "", "15")
    assert float(top["best val/acc"]) == pytest.approx(np.mean(best), abs=5e-5)
    assert float(top["best val/acc std"]) == pytest.approx(np.std(best, ddof=1), abs=5e-5)
    assert float(top["test/acc"]) == pytest.approx(np.mean(test), abs=5e-5)
    assert float(top["test/acc std"]) == pytest.approx(np.std(test, ddof=1), abs=5e-5)
    assert sorted(r["name"] for r in rows if r["group"] == "cv_s*") == sorted(
        f"cv_s{s}_f{f}" for s in SEEDS for f in range(FOLDS)
    )


def test_a_run_that_differs_in_another_key_is_never_merged(tmp_path: Path) -> None:
    root = tmp_path / "experiments"
    best, _ = cross_validation(root)
    val, test = known_values(2, seed=7)
    # seed 0 fold 0 as in the cross-validation, but another learning rate; and another number of epochs
    write_run(root / "other_lr", config(0, 0, lr=0.1), list(val[0]), float(test[0]))
    write_run(root / "other_epochs", {**config(1, 1), "epochs": 4}, [*val[1], 0.1], float(test[1]))
    markdown, rows = board(root)

    by_name = {row["name"]: row for row in rows}
    for name, values in (("other_lr", val[0]), ("other_epochs", val[1])):
        assert (by_name[name]["group"], by_name[name]["runs"]) == ("", "1")
        assert by_name[name]["best val/acc"] == f"{values.max():.4f}"
        assert by_name[name]["best val/acc std"] == ""
    assert by_name["cv_s*"]["runs"] == "15"
    assert float(by_name["cv_s*"]["best val/acc"]) == pytest.approx(np.mean(best), abs=5e-5)
    assert len(rows) == 1 + 15 + 2


def test_two_configs_each_merge_apart_and_rank_by_their_means(tmp_path: Path) -> None:
    root = tmp_path / "experiments"
    results = {lr: cross_validation(root, lr=lr, prefix=f"lr{lr}")[0] for lr in (0.01, 0.003)}
    write_run(root / "a_weak", config(0, 0, lr=0.5), [0.1, 0.2, 0.15], 0.2)  # first by name, last by value
    markdown, rows = board(root)

    merged = [row for row in rows if row["runs"] == "15"]
    assert {row["name"] for row in merged} == {"lr0.01_s*", "lr0.003_s*"}
    for row in merged:
        lr = float(row["optimizer.lr"])
        assert float(row["best val/acc"]) == pytest.approx(np.mean(results[lr]), abs=5e-5)
        assert all(member["optimizer.lr"] == row["optimizer.lr"] for member in rows if member["group"] == row["name"])
    means = [float(row["best val/acc"]) for row in merged]
    assert means == sorted(means, reverse=True)
    ranked = [row["name"] for row in markdown if not row["name"].startswith(MEMBER)]
    assert ranked == [*(row["name"] for row in merged), "a_weak"]


def test_no_aggregate_lists_every_run_as_before(tmp_path: Path) -> None:
    root = tmp_path / "experiments"
    best, _ = cross_validation(root)
    markdown, rows = board(root, "--no-aggregate")

    assert len(rows) == 15 and "runs" not in rows[0] and "group" not in rows[0]
    assert [row["name"] for row in rows] == [row["name"] for row in markdown]
    assert [float(row["best val/acc"]) for row in rows] == sorted((float(f"{b:.4f}") for b in best), reverse=True)


def test_a_fold_without_a_value_is_left_out_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "experiments"
    _, test = cross_validation(root)
    (root / "cv_s2_f4" / "test" / "metrics.json").unlink()  # the last run (seed 2, fold 4) is not tested yet
    markdown, rows = board(root)

    tested = test[:-1]
    assert markdown[0]["test/acc"] == mean_std(tested) + " (n=14)"
    assert rows[0]["test/acc n"] == "14" and rows[0]["best val/acc"]  # only the column that lacks a value counts
    assert "best val/acc n" not in rows[0]
    assert float(rows[0]["test/acc std"]) == pytest.approx(np.std(tested, ddof=1), abs=5e-5)


def test_runs_that_differ_in_nothing_are_repeats_not_merged(tmp_path: Path) -> None:
    root = tmp_path / "experiments"
    val, test = known_values(2)
    for name, epochs, acc in zip(("first", "again"), val, test, strict=True):
        write_run(root / name, config(seed=0, fold=0), list(epochs), float(acc))
    markdown, rows = board(root)

    assert [row["name"] for row in rows] == [row["name"] for row in markdown]  # a plain table: no group, no runs
    assert len(rows) == 2 and "runs" not in rows[0]


def test_folds_that_measured_their_own_image_size_still_merge(tmp_path: Path) -> None:
    """dataset.image_size=auto, dataset.normalize=auto: each fold's config.yaml holds the size and the mean it
    measured on its own train split; the .hydra record says what was asked for, and that is what is compared."""
    root = tmp_path / "experiments"
    val, test = known_values(FOLDS)
    for fold in range(FOLDS):
        requested = config(seed=0, fold=fold, image_size="auto", normalize="auto")
        measured = {"image_size": 224 + 8 * (fold % 2), "mean": [0.41 + fold / 1000, 0.32, 0.29]}
        saved = config(seed=0, fold=fold, normalize="auto", **measured)
        write_run(root / f"auto_f{fold}", saved, list(val[fold]), float(test[fold]), requested=requested)
    markdown, rows = board(root)

    assert rows[0]["runs"] == str(FOLDS) and rows[0]["dataset.image_size"] == "224, 232"
    assert rows[0]["dataset.mean"] == f"{FOLDS} values"  # five lists would make the cell unreadable
    assert markdown[0]["test/acc"] == mean_std(test)


def test_a_sweeps_own_table_merges_its_jobs(tmp_path: Path) -> None:
    root = tmp_path / "experiments"
    sweep = root / "cv" / "multirun" / "2026-01-01_00-00-00"
    val, test = known_values(FOLDS)
    for fold in range(FOLDS):
        write_run(sweep / f"{fold}_dataset.fold={fold}", config(0, fold), list(val[fold]), float(test[fold]))
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    _, rows = board(root)
    jobs = read_csv(sweep / "leaderboard.csv")

    assert rows[0]["name"] == "cv/multirun/2026-01-01_00-00-00/*"
    assert (jobs[0]["name"], jobs[0]["runs"]) == ("*", str(FOLDS))
    assert float(jobs[0]["test/acc"]) == pytest.approx(np.mean(test), abs=5e-5)
