"""Does the audit of a 1,000-image folder take no longer than training ``transfer`` on it once plus the k head fits?
(issue 29's time target)

    python benchmarks/audit_time.py PATH [--limit 1000] [--test-share 0.15] [--seed 0] [--recipe transfer]
                                         [--keep DIR] [--override key=value ...]

PATH is copied to a work folder as ``train/<class>/`` and ``test/<class>/`` (label_noise_pays.py's ``split_copy``;
``--limit`` keeps that many images, spread over the classes). Then, each a fresh process with its own empty cache:

1. ``python train.py -cn=<recipe> dataset.root=<copy>``: the time of one training, features included;
2. ``imgclf-audit -cn=<recipe> dataset.root=<copy>``: the audit's time from nothing (its features, the k folds'
   head fits, duplicates, outliers, galleries).

The k head fits' seconds are read from the audit's own log (``fold i/k: ... in S s``). The target holds when the
audit's time is at most the training's plus those head fits. It prints one table.

Measured (2026-12-07 evening, quiet machine, 2 CPU cores), seconds:

| folder | pool | train.py | 5 head fits | bound | imgclf-audit |
|---|---:|---:|---:|---:|---:|
| flowers5 ``--limit 1000`` | 850 | 81 | 48 | 129 | **117** (met) |
| food101_mini | 450 | 157 | 24 | 181 | **145** (met) |
| flowers5 (all) | 3,668 | 227 | 236 | 463 | 501 (8% over) |

On the whole of flowers5 the audit's second view of every image (the mirror, as ``tta=flip`` predicts) costs more
than the bound leaves.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from label_noise_pays import AUDIT, Runs, command, split_copy  # noqa: E402

FOLD_LINE = re.compile(r"fold (\d+)/(\d+): trained on \d+ image\(s\), scored \d+ held-out image\(s\) in ([0-9.]+) s")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="an image folder (train/ and test/ of class folders, or class folders)")
    parser.add_argument("--limit", type=int, default=1000, help="keep this many images (0: all)")
    parser.add_argument("--test-share", type=float, default=0.15, help="test share carved from a folder without test/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", default="transfer")
    parser.add_argument("--keep", type=Path, help="work here (kept) instead of a temporary folder")
    parser.add_argument("--override", action="append", default=[], help="extra override for both commands")
    return parser.parse_args(argv)


def fold_seconds(log: str) -> list[float]:
    """The seconds of each fold the audit's log reports, in order."""
    return [float(m.group(3)) for m in FOLD_LINE.finditer(log)]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        copy = work / "data"
        split_copy(args.path, copy, args.test_share, args.limit or None, args.seed)
        images = sum(1 for f in (copy / "train").rglob("*") if f.is_file())
        runs = Runs(work, args.recipe, args.override)
        train = command([str(ROOT / "train.py")], *runs.args("trained", copy, "cache_train"))
        said: list[str] = []
        audit = command(AUDIT, *runs.args("audited", copy, "cache_audit"), output=said)
    heads = fold_seconds("\n".join(said))
    if not heads:
        raise SystemExit("the audit's log has no fold lines: did the recipe take the fast path (cached features)?")
    bound = train + sum(heads)
    print(f"\n{args.path.name}: {images} train images (the audit's pool), recipe {args.recipe}, 2 CPU cores\n")
    print("| | seconds |\n|---|---:|")
    print(f"| `train.py` once (empty cache) | {train:.0f} |")
    print(
        f"| the audit's {len(heads)} head fits (its log) | {sum(heads):.0f} ({', '.join(f'{h:.0f}' for h in heads)}) |"
    )
    print(f"| bound: training once + the head fits | {bound:.0f} |")
    print(f"| `imgclf-audit` (empty cache) | {audit:.0f} |")
    verdict = "met" if audit <= bound else "NOT met"
    print(
        f"\ntarget: the audit within one training plus the head fits: {verdict} ({audit:.0f} s against {bound:.0f} s)"
    )


if __name__ == "__main__":
    main()
