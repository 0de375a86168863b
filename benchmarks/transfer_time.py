"""`transfer` on a folder of about 1,000 photos: train.py + test.py wall time and test accuracy with its frozen passes
on onnxruntime (trainer.frozen_engine=auto) against the eager PyTorch path (trainer.frozen_engine=torch), in the same
run (issue 30's target: train + test within 5 minutes on 2 CPU cores, at unchanged accuracy).

    python benchmarks/transfer_time.py PATH [--limit 1000] [--test-share 0.2] [--seed 0] [--keep DIR]
                                            [--engines auto torch] [--override key=value ...]

PATH is copied as ``train/<class>/`` and ``test/<class>/`` (benchmarks/label_noise_pays.py's ``split_copy``: a folder
without ``test/`` gets a seeded, stratified ``--test-share`` carved; ``--limit`` keeps that many photos spread over
the classes). Each engine runs train.py then test.py in fresh processes with its own empty cache (paths.cache), as a
first run on a new folder does: decoding, the feature cache (and the export), 40 head epochs, test with the flip.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from label_noise_pays import Runs, command, split_copy  # noqa: E402

TARGET_SECONDS = 300


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="an image folder (train/ and test/ of class folders, or class folders)")
    parser.add_argument("--limit", type=int, default=1000, help="photos kept (a folder without test/ only)")
    parser.add_argument("--test-share", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", nargs="+", default=["auto", "torch"])
    parser.add_argument("--keep", type=Path, help="work here (kept) instead of a temporary folder")
    parser.add_argument("--override", action="append", default=[], help="extra override for every command")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        data = work / "data"
        if not data.is_dir():
            split_copy(args.path, data, args.test_share, args.limit, args.seed)
        counts = {s: sum(1 for p in (data / s).rglob("*") if p.is_file()) for s in ("train", "test")}
        print(f"{args.path}: {counts['train']} train + {counts['test']} test photos; {' '.join(args.override)}")
        runs = Runs(work, "transfer", args.override)
        rows = []
        for engine in args.engines:
            run_args = runs.args(f"engine_{engine}", data, f"cache_{engine}", f"trainer.frozen_engine={engine}")
            train_s = command([str(ROOT / "train.py")], *run_args)
            test_s = command([str(ROOT / "test.py")], *run_args)
            metrics = json.loads((work / "experiments" / f"engine_{engine}" / "test" / "metrics.json").read_text())
            rows.append((engine, train_s, test_s, metrics["accuracy"]))
            print(
                f"  {engine}: train {train_s:.0f} s, test {test_s:.0f} s, accuracy {metrics['accuracy']:.3f}",
                flush=True,
            )
    print("\n| trainer.frozen_engine | train.py s | test.py s | train + test | test accuracy |\n|---|---|---|---|---|")
    for engine, train_s, test_s, accuracy in rows:
        print(f"| {engine} | {train_s:.0f} | {test_s:.0f} | {train_s + test_s:.0f} s | {accuracy:.3f} |")
    first = rows[0][1] + rows[0][2]
    verdict = "met" if first <= TARGET_SECONDS else "NOT met"
    print(f"\n{rows[0][0]}: train + test {first:.0f} s (target <= {TARGET_SECONDS} s: {verdict})")


if __name__ == "__main__":
    main()
