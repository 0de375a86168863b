"""The audit folder: three CSVs, the galleries and summary.md, written as a whole (``atomic.staged_folder``):
a reader sees the previous audit or this one, never a mix."""

from __future__ import annotations

from pathlib import Path

from imgclf.atomic import csv_text, staged_folder, write_text_atomic
from imgclf.audit.duplicates import Pair
from imgclf.audit.gallery import Tile, write_gallery
from imgclf.audit.issues import LabelIssue
from imgclf.audit.outliers import Outlier
from imgclf.audit.records import Audited, Findings
from imgclf.audit.summary import summary_text

ISSUE_COLUMNS = ("path", "split", "given", "suggested", "score")
DUPLICATE_COLUMNS = ("path_a", "path_b", "similarity", "splits")
OUTLIER_COLUMNS = ("path", "split", "given", "score", "why")


def issue_rows(images: Audited, issues: list[LabelIssue]) -> list[tuple]:
    names = images.class_names
    return [
        (images.relative(i.index), images.splits[i.index], names[i.given], names[i.suggested], f"{i.score:.4f}")
        for i in issues
    ]


def duplicate_rows(images: Audited, pairs: list[Pair]) -> list[tuple]:
    rows = []
    for p in pairs:
        splits = sorted({images.splits[p.a], images.splits[p.b]})
        rows.append((images.relative(p.a), images.relative(p.b), f"{p.similarity:.4f}", "/".join(splits)))
    return rows


def outlier_rows(images: Audited, outliers: list[Outlier]) -> list[tuple]:
    names = images.class_names
    return [
        (images.relative(o.index), images.splits[o.index], names[int(images.labels[o.index])], f"{o.score:.4f}", o.why)
        for o in outliers
    ]


def write_audit(target: Path, images: Audited, found: Findings, *, gallery_rows: int, gallery_pages: int) -> Path:
    """Write ``target`` (``experiments/<name>/audit``) as a whole; returns summary.md's path."""
    names = images.class_names
    with staged_folder(target) as folder:
        write_text_atomic(folder / "label_issues.csv", csv_text(ISSUE_COLUMNS, issue_rows(images, found.issues)))
        write_text_atomic(folder / "duplicates.csv", csv_text(DUPLICATE_COLUMNS, duplicate_rows(images, found.pairs)))
        write_text_atomic(folder / "outliers.csv", csv_text(OUTLIER_COLUMNS, outlier_rows(images, found.outliers)))
        pages = {"rows": gallery_rows, "max_pages": gallery_pages}
        galleries = {
            "label_issues": write_gallery(
                folder,
                "label_issues",
                [
                    Tile(
                        (images.paths[i.index],),
                        (
                            images.relative(i.index),
                            f"given: {names[i.given]}",
                            f"suggested: {names[i.suggested]}",
                            f"label quality {i.score:.3f}",
                        ),
                    )
                    for i in found.issues
                ],
                columns=5,
                title="label issues, most suspect first: given label, suggested label (label quality)",
                **pages,
            ),
            "duplicates": write_gallery(
                folder,
                "duplicates",
                [
                    Tile(
                        (images.paths[p.a], images.paths[p.b]),
                        (
                            images.relative(p.a),
                            images.relative(p.b),
                            f"{'identical files' if p.identical else f'similarity {p.similarity:.3f}'}, "
                            f"{'/'.join(sorted({images.splits[p.a], images.splits[p.b]}))}",
                        ),
                    )
                    for p in found.pairs
                ],
                columns=2,
                title="duplicates, most similar first",
                **pages,
            ),
            "outliers": write_gallery(
                folder,
                "outliers",
                [
                    Tile(
                        (images.paths[o.index],),
                        (
                            images.relative(o.index),
                            f"given: {names[int(images.labels[o.index])]}",
                            f"outlier score {o.score:.3f}",
                        ),
                    )
                    for o in found.outliers
                ],
                columns=5,
                title="outliers, most unusual first",
                **pages,
            ),
        }
        text = summary_text(images, found, {k: [p.name for p in v] for k, v in galleries.items()})
        write_text_atomic(folder / "summary.md", text)
    return target / "summary.md"
