"""Runs that differ only in their fold or seed, as one row of the leaderboard that reads ``mean ± std``.

A k-fold cross-validation (``dataset.folds=5 dataset.fold=0,1,2,3,4``) or a seed sweep (``seed=1,2,3``) is
one configuration measured several times: what a reader compares is its mean and its spread, not its
luckiest fold. So rows whose configs are equal but for :data:`AGGREGATED_KEYS` (and the bookkeeping keys the
leaderboard never compares: ``experiment``, ``paths.*``, ...) are merged into one row, ranked by the mean,
with the runs it merges listed right below it (``↳ name``): a fold that failed or lags stays in sight.

- Configs are compared as the runs were asked for (their ``.hydra`` record) where they have one, so what a
  run measured on its own split (``dataset.image_size=auto``, ``dataset.normalize=auto``) does not keep its
  folds apart; a row without a record is compared by its config.yaml. A run without a config is never merged.
- Runs that differ in nothing, not even their seed or fold (the same run under two names), are repeats, not
  a sweep: they stay apart. In a group of runs that differ in seed or fold, a repeat is merged and named in
  the row's notes.
- A metric cell is ``mean ± std`` over the runs that have the value, std being the **sample** standard
  deviation (n - 1 in the denominator, numpy's ``np.std(x, ddof=1)``): the spread one more run would show.
  ``(n=k)`` follows when only k of the runs have it (a fold not tested yet); one value has no std.
- Other cells list the distinct values of the runs (``seed``: ``0, 1, 2``; ``status``: ``finished, running``),
  or say how many there are when the list would be long (``dataset.mean`` measured per fold: ``5 values``).
- The CSV stays machine-readable: the mean and the std are columns of their own (``test/acc``,
  ``test/acc std``, and ``test/acc n`` when some merged row lacks a value), every run keeps its row, and
  ``group`` names the merged row a run belongs to (empty on the merged rows and on runs merged with none,
  so ``group == ""`` is the ranked leaderboard).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from imgclf.cli.leaderboard_table import (
    IGNORED_PREFIXES,
    Column,
    Row,
    columns,
    format_value,
    number,
    one_line,
    rank_key,
    sort_rows,
    sort_value,
)
from imgclf.experiment.bookkeeping import is_bookkeeping

# the keys merged runs may differ in: what a cross-validation or a seed sweep varies, not what is compared
AGGREGATED_KEYS = ("seed", "dataset.fold", "dataset.split_seed")
MEMBER = "↳ "  # a merged run's name in the markdown, below its merged row
LISTED_WIDTH = 40  # a merged cell lists its runs' distinct values up to this width, else says how many

Cells = list[list[str]]


@dataclass
class Group:
    """Runs merged into one row: equal configs but for :data:`AGGREGATED_KEYS`."""

    name: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)


def merge(rows: list[Row]) -> list[Row | Group]:
    """The rows, with those that differ only in :data:`AGGREGATED_KEYS` merged into groups (first-seen order)."""
    classes: dict[Hashable, list[Row]] = {}
    entries: list[Row | Group | Hashable] = []
    for row in rows:
        identity = _identity(row)
        if identity is None:
            entries.append(row)
        else:
            if identity not in classes:
                entries.append(identity)
            classes.setdefault(identity, []).append(row)
    merged: list[Row | Group] = []
    for entry in entries:
        if isinstance(entry, Row):
            merged.append(entry)
            continue
        members = classes[entry]
        varied = {_aggregated(row) for row in members}
        if len(varied) < 2:  # no seed or fold differs: repeats of one run, not a sweep
            merged.extend(members)
            continue
        repeats = len(members) - len(varied)
        notes = [f"{repeats} run(s) repeat the {'/'.join(AGGREGATED_KEYS)} of another"] if repeats else []
        merged.append(Group(_group_name([row.name for row in members]), members, notes))
    return merged


def summary(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; None for fewer than two values) of ``values``."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def build(rows: list[Row], sort: str | None = None) -> tuple[list[str], Cells, list[str], Cells] | None:
    """The markdown's header and cells and the CSV's, with merged rows; None when no rows merge.

    Args:
        rows: the experiments.
        sort: None to rank by each row's monitored metric, else a metric (see ``sort_value``).
    """
    entries = merge(rows)
    if not any(isinstance(entry, Group) for entry in entries):
        return None
    table = columns(rows, sort)
    if any(isinstance(e, Group) and e.notes for e in entries) and table[-1].title != "notes":
        table.append(Column("notes", lambda r: "; ".join(r.notes), merged=False))
    # "<metric> n" in the CSV only where some merged row lacks the value in some of its runs
    counts = [
        c.value is not None and any(isinstance(e, Group) and len(_values(c, e.rows)) < len(e.rows) for e in entries)
        for c in table
    ]
    header = [table[0].title, "runs", *(c.title for c in table[1:])]
    csv_header = [table[0].title, "group", "runs"]
    for column, counted in zip(table[1:], counts[1:], strict=True):
        csv_header += [column.title] + ([f"{column.title} std"] * bool(column.value)) + [f"{column.title} n"] * counted
    cells: Cells = []
    csv_cells: Cells = []
    for entry in sorted(entries, key=lambda e: _rank(e, sort)):
        if isinstance(entry, Row):
            cells.append(_row_cells(entry, table, "1"))
            csv_cells.append(_csv_cells(entry, table, counts, "", "1"))
            continue
        cells.append(_group_cells(entry, table))
        csv_cells.append(_group_csv_cells(entry, table, counts))
        for member in sort_rows(entry.rows, sort):
            cells.append([MEMBER + member.name, *_row_cells(member, table, "")[1:]])
            csv_cells.append(_csv_cells(member, table, counts, entry.name, ""))
    return header, cells, csv_header, csv_cells


def _identity(row: Row) -> Hashable | None:
    """What must be equal for two rows to merge: the group options and every compared config value."""
    config = row.requested if row.requested is not None else row.config
    if config is None or row.config is None:
        return None
    values = tuple(
        sorted(
            (key, format_value(key, value))
            for key, value in config.items()
            if key not in AGGREGATED_KEYS and not is_bookkeeping(key) and not key.startswith(IGNORED_PREFIXES)
        )
    )
    return row.requested is not None, tuple(sorted(row.choices.items())), values


def _aggregated(row: Row) -> tuple[str, ...]:
    return tuple(format_value(key, (row.config or {}).get(key)) for key in AGGREGATED_KEYS)


def _group_name(names: list[str]) -> str:
    """``cv_fold*`` for ``cv_fold0`` ... ``cv_fold4``; ``beta/multirun/<date>/*`` for the jobs of one sweep."""
    return os.path.commonprefix(names) + "*"


def _values(column: Column, rows: list[Row]) -> list[float]:
    """The column's values of the rows that have one (a metric column)."""
    return [v for v in map(column.value, rows) if v is not None] if column.value else []


def _rank(entry: Row | Group, sort: str | None) -> tuple[int, float, str]:
    if isinstance(entry, Row):
        return rank_key(*sort_value(entry, sort), entry.name)
    values = [v for v in (sort_value(row, sort)[0] for row in entry.rows) if v is not None]
    return rank_key(summary(values)[0], sort_value(entry.rows[0], sort)[1], entry.name)


def _row_cells(row: Row, table: list[Column], runs: str) -> list[str]:
    cells = [one_line(column.cell(row)) for column in table]
    return [cells[0], runs, *cells[1:]]


def _csv_cells(row: Row, table: list[Column], counts: list[bool], group: str, runs: str) -> list[str]:
    cells = [row.name, group, runs]
    for column, counted in zip(table[1:], counts[1:], strict=True):
        cells += [one_line(column.cell(row))] + [""] * bool(column.value) + [""] * counted
    return cells


def _group_cells(group: Group, table: list[Column]) -> list[str]:
    cells = [group.name, str(len(group.rows))]
    for column in table[1:]:
        if column.value is not None:
            values = _values(column, group.rows)
            mean, std = summary(values)
            text = _text(column)
            cell = text(mean) if std is None else f"{text(mean)} ± {text(std)}"
            cells.append(cell + (f" (n={len(values)})" if 0 < len(values) < len(group.rows) else ""))
        else:
            cells.append(_merged_cell(group, column))
    return cells


def _group_csv_cells(group: Group, table: list[Column], counts: list[bool]) -> list[str]:
    cells = [group.name, "", str(len(group.rows))]
    for column, counted in zip(table[1:], counts[1:], strict=True):
        if column.value is None:
            cells.append(_merged_cell(group, column))
            continue
        values = _values(column, group.rows)
        mean, std = summary(values)
        cells += [_text(column)(mean), _text(column)(std)] + [str(len(values))] * counted
    return cells


def _merged_cell(group: Group, column: Column) -> str:
    """A cell that is not a number: the runs' distinct values, in natural order; the group's own notes."""
    if not column.merged:
        return one_line("; ".join(group.notes)) if column.title == "notes" else ""
    distinct = {one_line(column.cell(row)) for row in group.rows} - {""}
    listed = ", ".join(sorted(distinct, key=_natural))
    return listed if len(listed) <= LISTED_WIDTH else f"{len(distinct)} values"


def _natural(cell: str) -> tuple[int, float, str]:
    try:
        return 0, float(cell), cell
    except ValueError:
        return 1, 0.0, cell


def _text(column: Column) -> Callable[[float | None], str]:
    return column.text or number
