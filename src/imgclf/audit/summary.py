"""summary.md: what the audit found, in numbers, and what to do next (with the commands)."""

from __future__ import annotations

from collections import Counter

from imgclf.audit.issues import flag_rates
from imgclf.audit.records import Audited, Findings


def summary_text(images: Audited, found: Findings, galleries: dict[str, list[str]]) -> str:
    names = images.class_names
    counts = Counter(images.splits)
    exact = sum(p.identical for p in found.pairs)
    across = sum(images.splits[p.a] != images.splits[p.b] for p in found.pairs)
    notes = found.notes
    lines = [
        f"# Audit of {images.root}",
        "",
        f"{len(images.paths)} labelled images ({', '.join(f'{s} {n}' for s, n in sorted(counts.items()))}), "
        f"{len(names)} classes. {notes.get('how', '')}",
        "",
        "| finding | count | file |",
        "|---|---|---|",
        f"| suspect labels | {len(found.issues)} | label_issues.csv |",
        f"| duplicate pairs ({exact} identical files, {across} across splits) | {len(found.pairs)} | duplicates.csv |",
        f"| outliers | {len(found.outliers)} | outliers.csv |",
        "",
        "## Suspect labels",
        "",
        "Ranked by cleanlab's label quality score on out-of-fold probabilities "
        f"({notes.get('rank_by', 'self_confidence')}: 0 to 1, lower is more likely wrong): the N lowest-scored "
        "images, N being confident learning's estimate of the wrong labels (`cleanlab.count.num_label_issues`), "
        "then the further images confident learning flags by the noise rate between classes. The estimated "
        "share of wrong labels per class is the count of flagged images given that class over the class's "
        "image count:",
        "",
        "| class | images | flagged | estimated wrong |",
        "|---|---|---|---|",
    ]
    rates = flag_rates(found.issues, images.labels, len(names))
    flagged = Counter(i.given for i in found.issues)
    sizes = Counter(int(label) for label in images.labels)
    for c, name in enumerate(names):
        lines.append(f"| {name} | {sizes[c]} | {flagged[c]} | {rates[c]:.1%} |")
    if notes.get("small_classes"):
        lines += ["", f"Classes with fewer images than folds (their scores are less sure): {notes['small_classes']}."]
    lines += [
        "",
        "## Duplicates",
        "",
        notes.get("duplicates", ""),
        "",
        "## Outliers",
        "",
        notes.get("outliers", ""),
        "",
        "## Galleries",
        "",
        *[f"- {kind}: {', '.join(pages) if pages else 'none (nothing flagged)'}" for kind, pages in galleries.items()],
        "",
        "## What to do next",
        "",
        "1. Look at the galleries; a flagged label is a suspicion, not a verdict. Delete from label_issues.csv the "
        "rows whose label is right after all (keep the header).",
        "2. Train without the images still listed (your folder is not touched):",
        "",
        "   ```",
        f"   {notes.get('exclude_command', '')}",
        "   ```",
        "",
        "   or, for rows whose suggested label is right, give the list as `dataset.relabel=` instead.",
        "3. Duplicates across splits make the test score optimistic: remove one image of each such pair from your "
        "folder (or list it in the exclude list). Outliers: remove what is not a photo of the task.",
        "",
    ]
    return "\n".join(lines)
