"""imgclf-leaderboard: one table of every experiment and sweep job.

    imgclf-leaderboard [--experiments-dir DIR] [--sort METRIC] [--no-aggregate]
    python -m imgclf.leaderboard --experiments-dir experiments --sort test/accuracy

Writes ``DIR/leaderboard.md`` and ``DIR/leaderboard.csv`` (the same cells, but for merged rows: see below) and
prints the markdown; every sweep folder (``DIR/<experiment>/multirun/<date_time>/``, or an Optuna search's
``DIR/<experiment>/optuna/<name>/``: any folder with ``multirun.yaml``) also gets a leaderboard of its own jobs. An experiment is any folder under DIR holding ``config.yaml``, ``metrics.jsonl``,
``best.pt`` or ``last.pt`` (``.hydra`` and other hidden folders and an experiment's ``test*/``
reports are not). Exit status 1 when DIR is missing or holds no experiment (nothing is written).

Runs that differ only in ``seed``, ``dataset.fold`` or ``dataset.split_seed`` (a k-fold cross-validation,
a seed sweep) are merged by default into one row, named by their common prefix (``cv_fold*``,
``<experiment>/multirun/<date_time>/*``), whose metric cells read ``mean ± std`` (the sample standard
deviation, ddof=1) over its ``runs``; it is ranked by the mean, and the runs it merges follow it (``↳ name``).
The CSV gives the mean and the std columns of their own (``test/acc``, ``test/acc std``) and names each run's
merged row in ``group``. Merging is the default because such runs are one configuration measured several
times: a single fold is not a result to rank. ``--no-aggregate`` lists every run as a row of its own. Runs
with any other difference are never merged (:mod:`imgclf.cli.leaderboard_groups` says how exactly).

Columns:
    name            the folder, relative to DIR (to the sweep folder in a sweep's table)
    runs            how many runs a merged row takes together (1 for a run merged with none), only
                    when some rows are merged
    <config keys>   what differs between the rows: a config group's option (``model``: ``lite0``,
                    from the ``.hydra`` record; without one, the class's last name: ``AdamW``), and
                    the keys of config.yaml (flattened: ``optimizer.lr``) whose values differ between
                    rows that use the same option of their group. Never shown: keys set by
                    interpolation (``${dataset.num_classes}``), experiment, paths.*, hydra.*,
                    progress, resume, overwrite, and monitor, mode, epochs (columns of their own)
    monitor         ``val/acc (max)``, only when the rows monitor different metrics; otherwise
                    the metric is named in the next header
    best <monitor>  the best monitored value in metrics.jsonl (config ``monitor``/``mode``)
    best epoch      the epoch it was reached (the first, on ties)
    epochs          epochs done / configured
    status          running (a ``.lock`` whose process is alive), failed (no epoch done),
                    finished (all configured epochs), pruned (an Optuna trial its pruner stopped:
                    ``trial/pruned`` in metrics.jsonl), stopped early (early stopping), incomplete
    test/...        from ``test/metrics.json`` when some row has it: accuracy, macro F1, and when
                    present the 95% CI of accuracy and the ECE
    time            training time, the sum of ``epoch_seconds``
    params          the model's parameter count (``num_parameters`` of best.pt/last.pt, or counted
                    from the weights, without normalization and BatchNorm buffers)
    notes           what could not be read (a torn metrics line, a corrupt checkpoint, ...)

Rows are ranked best first by each row's own monitored metric in its direction (rows without a
value last); ``--sort test/accuracy`` (or another ``test/<key>`` of metrics.json, or a
metrics.jsonl key such as ``val/f1``: its best epoch) ranks by that instead, smaller first for
losses, ECE and NLL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from imgclf.atomic import csv_text, pid_alive, write_text_atomic
from imgclf.cli import leaderboard_groups as groups
from imgclf.cli.common import EXIT_CLOSED_PIPE, add_experiments_dir, add_version, print_table
from imgclf.cli.leaderboard_table import Row, best_of, build, direction, flatten, sort_value, to_markdown
from imgclf.sweeps.trial import PRUNED_KEY

EXPERIMENT_FILES = ("config.yaml", "metrics.jsonl", "best.pt", "last.pt")
BUFFER_NAMES = frozenset({"mean", "std", "num_batches_tracked"})  # and running_*


def find_experiments(root: Path) -> list[Path]:
    """Every experiment folder under ``root`` (``root`` included), in a stable order."""
    found = []
    for folder, subdirs, files in os.walk(root):
        is_experiment = any(name in files for name in EXPERIMENT_FILES)
        if is_experiment:
            found.append(Path(folder))
        # test*/ of an experiment are test.py's reports; .hydra and other hidden folders are records
        subdirs[:] = sorted(
            d for d in subdirs if not d.startswith(".") and not (is_experiment and d.startswith("test"))
        )
    return found


def read_row(folder: Path, name: str) -> Row:
    """Everything the leaderboard shows about the experiment in ``folder``; never raises on bad files."""
    row = Row(name=name)
    config = _read_config(folder, row.notes)
    records = _read_metrics(folder / "metrics.jsonl", row.notes)
    checkpoint = _read_checkpoints(folder, row.notes)
    if config is None and isinstance(checkpoint.get("config"), Mapping):
        config = dict(checkpoint["config"])
        row.notes.append("config from the checkpoint")
    row.config = flatten(config) if config is not None else None
    row.choices, row.derived, row.requested = _read_hydra_record(folder, row.notes)
    _fill_settings(row, config or {}, checkpoint)
    row.records = records
    state = checkpoint.get("state") if isinstance(checkpoint.get("state"), Mapping) else {}
    _fill_progress(row, records, state)
    row.status = _status(folder / ".lock", row, bool(state.get("stopped_early")))
    row.test = _read_test(folder / "test" / "metrics.json", row.notes)
    row.num_parameters = checkpoint.get("num_parameters")
    return row


def _fill_settings(row: Row, config: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> None:
    """Monitored metric, its direction and the configured epochs: the config's, else the checkpoint's."""

    def setting(key: str) -> Any:
        return config.get(key, checkpoint.get(key))

    row.monitor = setting("monitor") if isinstance(setting("monitor"), str) else None
    row.mode = setting("mode") if setting("mode") in ("max", "min") else direction(row.monitor or "")
    row.epochs = setting("epochs") if isinstance(setting("epochs"), int) else None


def _fill_progress(row: Row, records: list[dict[str, Any]], state: Mapping[str, Any]) -> None:
    """Best value and epoch, epochs done and training time from metrics.jsonl (the checkpoint's
    state only where metrics.jsonl has no epochs)."""
    if row.monitor:
        row.best, row.best_epoch = best_of(records, row.monitor, row.mode or "max")
        if not records and isinstance(state.get("best"), float):
            row.best, row.best_epoch = state["best"], state.get("best_epoch")
            row.notes.append("best from the checkpoint")
    done = [r["epoch"] for r in records]
    if isinstance(state.get("epoch"), int):
        done.append(state["epoch"])
    row.epochs_done = max(done, default=0)
    times = [r["epoch_seconds"] for r in records if isinstance(r.get("epoch_seconds"), (int, float))]
    row.seconds = sum(times) if times else None


def _status(lock: Path, row: Row, stopped_early: bool) -> str:
    if lock.exists():
        from imgclf.experiment.folder import read_pid  # here: experiment.folder brings torch, which --help needs not

        pid = read_pid(lock)
        if pid is not None and pid_alive(pid):
            return "running"
        row.notes.append(f"stale .lock (process {pid} is not running)" if pid else "unreadable .lock")
    if row.epochs_done == 0:
        return "failed"
    if row.records and row.records[-1].get(PRUNED_KEY) == 1:
        return "pruned"
    if row.epochs is not None and row.epochs_done >= row.epochs:
        return "finished"
    return "stopped early" if stopped_early else "incomplete"


def _read_config(folder: Path, notes: list[str]) -> dict[str, Any] | None:
    path = folder / "config.yaml"
    if not path.exists():
        notes.append("no config.yaml")
        return None
    try:
        config = yaml.safe_load(path.read_text(errors="replace"))
    except (OSError, yaml.YAMLError) as exc:
        notes.append(f"config.yaml unreadable ({type(exc).__name__})")
        return None
    if not isinstance(config, dict):
        notes.append("config.yaml is not a mapping")
        return None
    return config


def _read_hydra_record(folder: Path, notes: list[str]) -> tuple[dict[str, str], set[str], dict[str, Any] | None]:
    """From the latest training command's record ``.hydra/train/<time>/``: the config groups'
    options (``hydra.yaml``: ``hydra.runtime.choices``, without Hydra's own groups), the keys
    whose value is an interpolation such as ``${dataset.num_classes}`` (``config.yaml``, unresolved):
    they follow other keys, and that config flattened: what was asked for, before the run wrote what it
    measured (an ``auto`` image size) into its config.yaml. Empty (None) when there is no record."""
    records = sorted((folder / ".hydra" / "train").glob("*/hydra.yaml"))
    if not records:
        return {}, set(), None
    try:
        choices = yaml.safe_load(records[-1].read_text(errors="replace"))["hydra"]["runtime"]["choices"]
        unresolved = yaml.safe_load((records[-1].parent / "config.yaml").read_text(errors="replace"))
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        notes.append(f"{records[-1].parent.relative_to(folder)} unreadable ({type(exc).__name__})")
        return {}, set(), None
    requested = flatten(unresolved) if isinstance(unresolved, dict) else None
    derived = {key for key, value in (requested or {}).items() if isinstance(value, str) and "${" in value}
    if not isinstance(choices, dict):
        return {}, derived, requested
    return (
        {
            str(group): "null" if option is None else str(option)
            for group, option in choices.items()
            if "/" not in str(group) and not str(group).startswith("hydra")
        },
        derived,
        requested,
    )


def _read_metrics(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """One record per epoch (the last line of an epoch wins), skipping torn or foreign lines."""
    if not path.exists():
        return []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        notes.append(f"metrics.jsonl unreadable ({type(exc).__name__})")
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    bad = 0
    for line in filter(str.strip, lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            by_epoch[record["epoch"]] = record
        else:
            bad += 1
    if bad:
        notes.append(f"{bad} unreadable line(s) in metrics.jsonl")
    return [by_epoch[e] for e in sorted(by_epoch)]


def _read_checkpoints(folder: Path, notes: list[str]) -> dict[str, Any]:
    """Metadata of ``last.pt`` (for its training state) merged over ``best.pt``'s; tensors are
    memory-mapped, so even large checkpoints cost little. ``num_parameters`` is always filled in
    when either file can be read."""
    merged: dict[str, Any] = {}
    for name in ("best.pt", "last.pt"):
        path = folder / name
        if not path.exists():
            continue
        try:
            import torch  # here, not at the top: --help and a folder without checkpoints need no torch

            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch raises many types for torn zips and pickles
            notes.append(f"{name} unreadable ({type(exc).__name__})")
            continue
        if not isinstance(payload, dict) or not isinstance(payload.get("model"), Mapping):
            notes.append(f"{name} is not an imgclf checkpoint")
            continue
        if not isinstance(payload.get("num_parameters"), int):  # written before the key existed
            payload["num_parameters"] = count_parameters(payload["model"])
        merged.update(
            {
                k: v
                for k, v in payload.items()
                if k in ("config", "monitor", "mode", "epochs", "state", "num_parameters")
            }
        )
    return merged


def count_parameters(state_dict: Mapping[str, Any]) -> int:
    """Parameters in a model state dict: every tensor but the normalization and BatchNorm buffers
    (for checkpoints written before ``num_parameters`` was stored)."""

    def is_buffer(key: str) -> bool:
        leaf = key.rsplit(".", 1)[-1]
        return leaf in BUFFER_NAMES or leaf.startswith("running_")

    return sum(t.numel() for k, t in state_dict.items() if hasattr(t, "numel") and not is_buffer(k))


def _read_test(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        metrics = json.loads(path.read_text(errors="replace"))
    except (OSError, json.JSONDecodeError) as exc:
        notes.append(f"test/metrics.json unreadable ({type(exc).__name__})")
        return {}
    if not isinstance(metrics, dict):
        return {}
    checkpoint, best = Path(str(metrics.get("checkpoint", "best.pt"))), path.parent.parent / "best.pt"
    if checkpoint.name != "best.pt" or (
        checkpoint.is_absolute() and checkpoint.exists() and best.exists() and not checkpoint.samefile(best)
    ):
        # written by test.py before reports of other checkpoints got their own folder: not this experiment's numbers
        notes.append(
            f"test/metrics.json is a report of {checkpoint}, not of this experiment's best.pt: run test.py again for it"
        )
        return {}
    return metrics


def sweep_folder(folder: Path) -> Path | None:
    """The sweep folder of a sweep job's folder (``.../multirun/<date_time>/``, or any folder where a
    sweeper saved ``multirun.yaml``, such as ``.../optuna/<name>/``), else None."""
    parent = folder.parent
    return parent if parent.parent.name == "multirun" or (parent / "multirun.yaml").exists() else None


def write_leaderboard(folder: Path, rows: list[Row], sort: str | None, aggregate: bool = True) -> str:
    """Write ``folder/leaderboard.md`` and ``.csv`` for ``rows``; return the markdown. With ``aggregate``,
    runs that differ only in fold or seed are merged (:mod:`imgclf.cli.leaderboard_groups`)."""
    merged = groups.build(rows, sort) if aggregate else None
    if merged is None:
        header, cells = build(rows, sort)
        csv_header, csv_cells = header, cells
    else:
        header, cells, csv_header, csv_cells = merged
    ranked = f"by {sort}" if sort else "by each row's monitored metric"
    intro = f"{len(rows)} run(s), best first {ranked}."
    if merged is not None:
        intro += (
            f" Runs that differ only in {', '.join(groups.AGGREGATED_KEYS)} are merged into one row, ranked by "
            f"its mean: mean ± sample std (ddof=1) over its `runs`, each listed below it ({groups.MEMBER.strip()}); "
            "`--no-aggregate` lists them apart."
        )
    markdown = f"# Leaderboard: {folder}\n\n{intro}\n\n" + to_markdown(header, cells)
    write_text_atomic(folder / "leaderboard.csv", csv_text(csv_header, csv_cells))
    write_text_atomic(folder / "leaderboard.md", markdown)
    return markdown


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="imgclf-leaderboard", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_experiments_dir(parser)
    parser.add_argument(
        "--sort",
        metavar="METRIC",
        default=None,
        help="rank by test/<key> of test/metrics.json or a metrics.jsonl key (default: each row's monitored metric)",
    )
    parser.add_argument(
        "--aggregate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="merge runs that differ only in seed, dataset.fold or dataset.split_seed into one row of "
        "mean ± std, each run listed below it (default); --no-aggregate: one row per run",
    )
    add_version(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root: Path = args.experiments_dir
    folders = find_experiments(root) if root.is_dir() else []
    if not folders:
        why = "is not a folder" if not root.is_dir() else "holds no experiment (no config.yaml, metrics.jsonl or *.pt)"
        print(
            f"imgclf-leaderboard: {root} {why}; train one with `python train.py` "
            "or point --experiments-dir at the folder that holds them",
            file=sys.stderr,
        )
        return 1
    rows = {folder: read_row(folder, folder.relative_to(root).as_posix()) for folder in folders}
    markdown = write_leaderboard(root, list(rows.values()), args.sort, args.aggregate)
    sweeps: dict[Path, list[Row]] = {}
    for folder, row in rows.items():
        sweep = sweep_folder(folder)
        if sweep is not None and sweep != root and sweep.is_relative_to(root):
            sweeps.setdefault(sweep, []).append(replace(row, name=folder.relative_to(sweep).as_posix()))
    for sweep, jobs in sweeps.items():
        write_leaderboard(sweep, jobs, args.sort, args.aggregate)
    if args.sort and all(sort_value(row, args.sort)[0] is None for row in rows.values()):
        print(f"imgclf-leaderboard: no experiment has a value for --sort {args.sort}", file=sys.stderr)
    if not print_table(markdown):  # the files are written already; a reader that stops early cuts the print only
        return EXIT_CLOSED_PIPE
    print(
        f"wrote {root / 'leaderboard.md'} and leaderboard.csv"
        + (f", and one for each of {len(sweeps)} sweep(s)" if sweeps else ""),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
