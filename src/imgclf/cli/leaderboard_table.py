"""The leaderboard's table: one :class:`Row` per experiment, sorted, with the config columns that
differ between the rows, written as markdown and as CSV with the very same cells.

Reading the rows from disk is :mod:`imgclf.cli.leaderboard`'s job; this module never touches files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from imgclf.experiment.bookkeeping import is_bookkeeping
from imgclf.training.state import is_better

# bookkeeping keys that say where or how a run was started, not what was trained; `monitor`,
# `mode` and `epochs` have columns of their own
IGNORED_KEYS = frozenset({"monitor", "mode", "epochs"})
IGNORED_PREFIXES = ("paths.", "hydra.")
# --sort METRIC: these words in a metric's name mean smaller is better
SMALLER_IS_BETTER = ("loss", "ece", "nll", "seconds", "error")
TEST_ALIASES = {"acc": "accuracy", "macro_f1": "f1"}
# --sort metrics that have a column anyway (when some row has them)
SHOWN_METRICS = frozenset({"test/accuracy", "test/acc", "test/f1", "test/macro_f1", "test/ece"})


@dataclass
class Row:
    """What is known about one experiment (or sweep job); None where it is unknown."""

    name: str
    config: dict[str, Any] | None = None  # flattened: dotted key -> value
    choices: dict[str, str] = field(default_factory=dict)  # config group -> option (Hydra's choices)
    derived: set[str] = field(default_factory=set)  # keys set by interpolation (${...})
    requested: dict[str, Any] | None = None  # flattened: the config as composed, before the run filled in
    # what it found in the data (image_size=auto, normalize=auto); None without a .hydra record
    monitor: str | None = None
    mode: str | None = None  # max | min
    best: float | None = None  # best monitored value in metrics.jsonl
    best_epoch: int | None = None
    epochs_done: int = 0
    epochs: int | None = None  # configured
    status: str = "failed"
    seconds: float | None = None  # sum of epoch_seconds
    num_parameters: int | None = None
    test: dict[str, Any] = field(default_factory=dict)  # test/metrics.json
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl, one per epoch
    notes: list[str] = field(default_factory=list)


Cell = Callable[[Row], str]  # one column's cell of a row


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 0.1}}`` -> ``{"optimizer.lr": 0.1}``; lists stay values, empty dicts vanish."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def best_of(records: Iterable[Mapping[str, Any]], key: str, mode: str) -> tuple[float | None, int | None]:
    """The best finite value of ``key`` over the epochs, and its (first) epoch."""
    best, epoch = None, None
    for record in records:
        value = record.get(key)
        if _is_number(value) and is_better(float(value), best, mode):
            best, epoch = float(value), record.get("epoch")
    return best, epoch


def direction(metric: str) -> str:
    """``min`` for losses, calibration errors and times, else ``max``."""
    return "min" if any(word in metric for word in SMALLER_IS_BETTER) else "max"


def sort_value(row: Row, metric: str | None) -> tuple[float | None, str]:
    """The value ``row`` is ranked by and its direction: the monitored metric by default,
    ``test/<key>`` from test/metrics.json, or the best epoch's value of a metrics.jsonl key."""
    if metric is None:
        return row.best, row.mode or "max"
    if metric.startswith("test/"):
        key = metric.removeprefix("test/")
        value = row.test.get(TEST_ALIASES.get(key, key))
        return (float(value) if _is_number(value) else None), direction(metric)
    return best_of(row.records, metric, direction(metric))[0], direction(metric)


def sort_rows(rows: list[Row], metric: str | None = None) -> list[Row]:
    """Best first, each row in its own direction; rows without a value last, then by name."""
    return sorted(rows, key=lambda row: rank_key(*sort_value(row, metric), row.name))


def rank_key(value: float | None, mode: str, name: str) -> tuple[int, float, str]:
    """The sort key of a row (or of merged runs, by their mean) ranked by ``value`` in direction ``mode``."""
    if value is None or not math.isfinite(value):
        return 1, 0.0, name
    return 0, -value if mode == "max" else value, name


def differing_keys(rows: Iterable[Row]) -> list[str]:
    """The config keys worth a column, in config order: a config group (``model``) whose option
    differs between the rows, and any other key whose value differs between rows that use the same
    option of its group. ``dataset.root`` differs between a flowers and a plates run, but the
    ``dataset`` column says so already; ``optimizer.lr`` of two ``adamw`` runs is shown. Keys set by
    interpolation (``model.num_classes: ${dataset.num_classes}``) follow others and are left out."""
    rows = [row for row in rows if row.config is not None]
    groups = config_groups(rows)
    derived = set().union(*(row.derived for row in rows))
    keys: dict[str, None] = {}
    for row in rows:
        for key in row.config or {}:
            if not _ignored(key) and key not in derived:
                head = key.split(".", 1)[0]
                if head in groups:
                    keys.setdefault(head)  # the group's own column first
                keys.setdefault(key)
    return [key for key in keys if _differs(rows, key, groups)]


def config_groups(rows: Iterable[Row]) -> list[str]:
    """The config groups of the rows: Hydra's choices, or any top-level node with a ``_target_``."""
    groups: dict[str, None] = {}
    for row in rows:
        groups.update(dict.fromkeys(row.choices))
        groups.update(
            dict.fromkeys(
                k.removesuffix("._target_") for k in row.config or {} if k.endswith("._target_") and k.count(".") == 1
            )
        )
    return list(groups)


def choice(row: Row, group: str) -> str:
    """The option of ``group`` a row used (``lite0``), else its class's short name (``EfficientNetLite0``)."""
    if group in row.choices:
        return row.choices[group]
    target = (row.config or {}).get(f"{group}._target_")
    return "" if target is None else format_value("_target_", target)


def _differs(rows: list[Row], key: str, groups: list[str]) -> bool:
    if key in groups:
        return len({choice(row, key) for row in rows}) > 1
    head = key.split(".", 1)[0]
    values: dict[str, set[tuple[bool, str]]] = {}
    for row in rows:
        config = row.config or {}
        values.setdefault(choice(row, head) if head in groups else "", set()).add(
            (key in config, format_value(key, config.get(key)))
        )
    return any(len(seen) > 1 for seen in values.values())


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or is_bookkeeping(key) or key.startswith(IGNORED_PREFIXES)


def column_names(keys: list[str]) -> list[str]:
    """``optimizer._target_`` -> ``optimizer`` (the class says which option of the group ran),
    unless ``optimizer`` has a column of its own (the group's option)."""
    return [k.removesuffix("._target_") if k.removesuffix("._target_") not in keys else k for k in keys]


def format_value(key: str, value: Any) -> str:
    """A config value as a short cell: classes by their last name, YAML spellings of bools and null."""
    if isinstance(value, str):
        return value.rsplit(".", 1)[-1] if key.endswith("_target_") else value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value("", v) for v in value) + "]"
    if isinstance(value, Mapping):  # e.g. one transform of a list: RandomResizedCrop(size=224, scale=[0.5, 1.0])
        name = format_value("_target_", value.get("_target_", ""))
        args = ", ".join(f"{k}={format_value(k, v)}" for k, v in value.items() if not str(k).startswith("_"))
        return f"{name}({args})" if name else "{" + args + "}"
    if isinstance(value, (int, float)):
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class Column:
    """One column of the table: its title, a row's cell, and for a number (a metric, the time) the value the
    cell shows, which :mod:`imgclf.cli.leaderboard_groups` averages over merged runs."""

    title: str
    cell: Cell
    value: Callable[[Row], float | None] | None = None
    text: Callable[[float | None], str] | None = None  # how a value reads as a cell (default: 4 decimals)
    merged: bool = True  # False: no cell in a row of merged runs (an interval of one test set, a run's notes)


def build(rows: list[Row], sort: str | None = None) -> tuple[list[str], list[list[str]]]:
    """The header and the cells (strings) of the table, sorted.

    Args:
        rows: the experiments.
        sort: None to rank by each row's monitored metric, else a metric (see :func:`sort_value`).
    """
    rows = sort_rows(rows, sort)
    table = columns(rows, sort)
    return [c.title for c in table], [[one_line(c.cell(row)) for c in table] for row in rows]


def columns(rows: list[Row], sort: str | None) -> list[Column]:
    """The columns the rows need: the config keys that differ, the metrics some row has, notes when any."""
    keys = differing_keys(rows)
    monitors = {row.monitor for row in rows if row.monitor}
    shared = next(iter(monitors)) if len(monitors) == 1 else None
    has = {k: any(k in row.test for row in rows) for k in ("accuracy", "f1", "accuracy_ci", "ece")}
    table = [Column("name", lambda r: r.name)]
    groups = config_groups(rows)
    table += [
        Column(title, _group_cell(k) if k in groups else _config_cell(k))
        for title, k in zip(column_names(keys), keys, strict=True)
    ]
    if shared is None:
        table.append(Column("monitor", lambda r: f"{r.monitor} ({r.mode})" if r.monitor else ""))
    table += [
        _metric(f"best {shared}" if shared else "best", lambda r: r.best),
        Column("best epoch", lambda r: "" if r.best_epoch is None else str(r.best_epoch)),
        Column("epochs", lambda r: f"{r.epochs_done}/{'?' if r.epochs is None else r.epochs}"),
        Column("status", lambda r: r.status),
    ]
    table += [column for key, column in _test_columns() if has[key]]
    if sort is not None and sort not in SHOWN_METRICS:
        table.append(_metric(sort, lambda r: sort_value(r, sort)[0]))
    table += [
        _metric("time", lambda r: r.seconds, text=duration),
        Column("params", lambda r: "" if r.num_parameters is None else str(r.num_parameters)),
    ]
    if any(row.notes for row in rows):
        table.append(Column("notes", lambda r: "; ".join(r.notes), merged=False))
    return table


def _metric(
    title: str, value: Callable[[Row], float | None], text: Callable[[float | None], str] | None = None
) -> Column:
    shown = text or number
    return Column(title, lambda r: shown(value(r)), value=value, text=shown)


def one_line(cell: str) -> str:
    """Runs of whitespace (newlines included) as one space, so both tables hold the same cells."""
    return " ".join(cell.split())


def _test_columns() -> list[tuple[str, Column]]:
    def test_value(key: str) -> Callable[[Row], float | None]:
        return lambda r: float(r.test[key]) if _is_number(r.test.get(key)) else None

    return [
        ("accuracy", _metric("test/acc", test_value("accuracy"))),
        ("f1", _metric("test/f1", test_value("f1"))),
        ("accuracy_ci", Column("test/acc 95% CI", lambda r: _interval(r.test.get("accuracy_ci")), merged=False)),
        ("ece", _metric("test/ece", test_value("ece"))),
    ]


def _group_cell(group: str) -> Cell:
    return lambda r: choice(r, group)


def _config_cell(key: str) -> Cell:
    return lambda r: "" if r.config is None or key not in r.config else format_value(key, r.config[key])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number(value: Any) -> str:
    """A metric as a cell: 4 decimals; empty when unknown."""
    return f"{value:.4f}" if _is_number(value) else ""


def _interval(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value):
        return f"{value[0]:.4f}-{value[1]:.4f}"
    return ""


def duration(seconds: float | None) -> str:
    """``12.3s``, ``4m05s``, ``2h03m``; empty when unknown."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def escape(cell: str) -> str:
    """A cell that cannot break a markdown table: backslashes and pipes escaped."""
    return cell.replace("\\", "\\\\").replace("|", "\\|")


def to_markdown(header: list[str], cells: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table, columns padded so it reads well in a terminal too."""
    table = [[escape(c) for c in header]] + [[escape(c) for c in row] for row in cells]
    widths = [max(3, *(len(line[i]) for line in table)) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in table]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines) + "\n"
