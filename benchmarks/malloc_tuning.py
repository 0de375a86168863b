"""Training steps of a small CNN on the CPU with and without imgclf's malloc tuning.

Each variant runs in its own process (the setting is process-wide), alternating, on the same
model, data and seed. Prints ms per step, system time and page faults, and the speed-up.

    python benchmarks/malloc_tuning.py [--size 64] [--batch 64] [--steps 15] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import json, resource, sys, time, torch
from imgclf.models.small_cnn import SmallCNN
from imgclf.runtime import tune_malloc
size, batch, steps, tuned = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
applied = tune_malloc() if tuned else False
torch.manual_seed(0)
model = SmallCNN(5, width=32)
opt = torch.optim.AdamW(model.parameters())
x, y = torch.randn(batch, 3, size, size), torch.randint(0, 5, (batch,))
def step():
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3):
    step()
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(steps):
    step()
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"ms": (time.perf_counter() - t0) / steps * 1000, "sys": r1.ru_stime - r0.ru_stime,
                  "faults": r1.ru_minflt - r0.ru_minflt, "applied": applied}))
"""


def run(size: int, batch: int, steps: int, tuned: bool) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(size), str(batch), str(steps), "1" if tuned else "0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    for size in args.size:
        results: dict[bool, list[dict]] = {False: [], True: []}
        for _ in range(args.repeats):
            for tuned in (False, True):
                results[tuned].append(run(size, args.batch, args.steps, tuned))
        print(f"SmallCNN, {size} px, batch {args.batch}, {args.steps} steps x {args.repeats} runs each:")
        ms = {}
        for tuned, runs in results.items():
            ms[tuned] = statistics.median(r["ms"] for r in runs)
            print(
                f"  {'tuned malloc' if tuned else 'glibc default':14s} {ms[tuned]:7.0f} ms/step  "
                f"sys {statistics.median(r['sys'] for r in runs):5.2f} s  "
                f"page faults {statistics.median(r['faults'] for r in runs):9.0f}"
            )
        print(f"  speed-up default / tuned = {ms[False] / ms[True]:.2f}")


if __name__ == "__main__":
    main()
