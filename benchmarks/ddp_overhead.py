"""What distributed training costs: one experiment on N torchrun processes against one process, same cores,
same global batch, same data (the digits quickstart, decoded in memory), measured in train.py's own
train/images_per_s (the median of the epochs after the first).

    python benchmarks/ddp_overhead.py                 # CPU: 1 process (all cores) vs 2 gloo processes (1 core each)
    python benchmarks/ddp_overhead.py --procs 4       # on a machine with more cores
    python benchmarks/ddp_overhead.py --gpus 4        # CUDA: 1 GPU vs 4 GPUs (NCCL), the global batch kept

On the CPU the processes share the same cores, so the ratio shows DDP's overhead (gradient all-reduce, the
one small all-reduce per step that agrees on the batch, the per-rank data slices); on GPUs it shows scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(procs: int, batch: int, epochs: int, workdir: Path, extra: list[str], threads: int | None = None) -> float:
    """train.py on ``procs`` processes (1: plain python, with ``threads`` CPU threads if given) with the global
    batch ``batch``; images/s of the run."""
    name = f"p{procs}t{threads}"
    overrides = [
        f"experiment={name}",
        f"epochs={epochs}",
        f"loader.batch_size={batch // procs}",
        "progress=false",
        "loader.cache=memory",
        "report.figures=false",
        f"paths.experiments={workdir / 'e'}",
        f"paths.runs={workdir / 'r'}",
        f"paths.cache={workdir / 'c'}",
        *extra,
    ]
    env = dict(os.environ)
    if procs == 1:
        command = [sys.executable, str(ROOT / "train.py"), *overrides]
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
    else:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // procs))  # the cores shared out, not oversubscribed
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={procs}",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            str(ROOT / "train.py"),
            *overrides,
        ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    lines = [json.loads(line) for line in (workdir / "e" / name / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(line["train/images_per_s"] for line in lines[1:] or lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, default=2, help="processes of the distributed run (CPU)")
    parser.add_argument("--gpus", type=int, default=0, help="compare 1 GPU with this many (CUDA machines)")
    parser.add_argument("--batch", type=int, default=128, help="global batch size of both runs")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("overrides", nargs="*", help="more train.py overrides, e.g. model=small_resnet")
    args = parser.parse_args()
    procs = args.gpus or args.procs
    extra = [*args.overrides, "device=auto" if args.gpus else "device=cpu"]
    with tempfile.TemporaryDirectory() as tmp:
        one = run(1, args.batch, args.epochs, Path(tmp), extra)
        share = max(1, (os.cpu_count() or 1) // procs)
        alone = run(1, args.batch, args.epochs, Path(tmp), extra, threads=share) if not args.gpus else None
        many = run(procs, args.batch, args.epochs, Path(tmp), extra)
    kind = "GPUs" if args.gpus else f"gloo processes on {os.cpu_count()} cores"
    print(f"global batch {args.batch}, {args.epochs} epochs, {' '.join(extra)}")
    print(f"{'run':<34}{'images/s':>10}")
    print(f"{'1 process':<34}{one:>10.0f}")
    if alone is not None:  # what each rank would do alone on its share of the cores
        print(f"{f'1 process, {share} thread(s)':<34}{alone:>10.0f}")
    print(f"{f'{procs} {kind}':<34}{many:>10.0f}")
    print(f"ratio {procs} processes / 1 process: {many / one:.2f}x")
    if alone is not None:
        print(f"DDP efficiency: {many / (procs * alone):.2f} of {procs} x (1 process on {share} thread(s))")


if __name__ == "__main__":
    main()
