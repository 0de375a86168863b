"""What the class activation maps add to ``python test.py``: the same test run with and without them, side by side.

    python benchmarks/cam_cost.py [--root ../shared/data/flowers5] [--repeats 2] [--work /tmp/cam_cost]

Trains ``flowers5_lite0`` briefly (frozen backbone, cached features, 1 epoch: the maps' cost does not depend on
how well it learnt), then runs ``python test.py`` as users do, alternately with the default report
(``report.cams=8``, ``report.cams_per_class=2``) and with ``report.cams=0 report.cams_per_class=0``, and prints
the wall times and their difference (which includes importing grad-cam, OpenCV and scikit-learn once).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, overrides: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / script), "-cn=flowers5_lite0", *overrides], cwd=ROOT, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "flowers5"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", default="/tmp/cam_cost")
    args = parser.parse_args()
    work = Path(args.work)
    common = [
        f"dataset.root={args.root}",
        "experiment=cam_cost",
        f"paths.experiments={work / 'experiments'}",
        f"paths.runs={work / 'runs'}",
        "progress=false",
        "report.bootstrap=0",
        "augmentation=none",  # the features are cached once
    ]
    if not (work / "experiments" / "cam_cost" / "best.pt").exists():
        run("train.py", [*common, "epochs=1", "model.freeze=backbone", "trainer.cache_features=true"])
    times: dict[str, list[float]] = {"with maps": [], "without": []}
    for _ in range(args.repeats):
        times["without"].append(run("test.py", [*common, "report.cams=0", "report.cams_per_class=0"]))
        times["with maps"].append(run("test.py", common))
    for name, values in times.items():
        print(
            f"test.py {name:9s}: median {statistics.median(values):6.1f} s  ({', '.join(f'{v:.1f}' for v in values)})"
        )
    extra = statistics.median(times["with maps"]) - statistics.median(times["without"])
    print(f"class activation maps add {extra:.1f} s (report.cams=8, report.cams_per_class=2, gradcam)")


if __name__ == "__main__":
    main()
