"""A GPU check ready to run: imgclf's CUDA paths end to end, in one command, within 8 minutes, with no network.

    python benchmarks/gpu_check.py                       # on a machine with a CUDA GPU: every step
    python benchmarks/gpu_check.py --device cpu --quick  # the same steps on the CPU at tiny sizes (CUDA-only: SKIP)

Steps, in the order they run (the cheap ones first, so that a slow compile cannot starve them):

  nccl             imgclf's DistributedDataParallel loop and collectives on an NCCL group of one rank (CUDA only)
  quickstart       train.py -cn=quickstart (12 epochs) with trainer.amp=auto (bf16 on a GPU that has it: train.log
                   must say so), channels-last, compile, pinned memory
                   and loader workers, then test.py: test accuracy against the recipe's target 0.95
  quickstart_fp16  the same with trainer.amp=fp16, eager: last.pt must hold the gradient scaler's state (CUDA only)
  torchrun_resume  torchrun --nproc_per_node=1 train.py stopped by SIGTERM once last.pt exists, then the same
                   command resumes: metrics.jsonl holds every epoch once
  loop_ratio       imgclf's train_one_epoch against a minimal hand-written loop, same ResNet-18, batches, AMP
  augment_vs_gpu   the CPU-side batch augmentation's images/s against the GPU's training images/s, and training
                   from the augmenting loader itself
  transfer_timm    train.py -cn=transfer model=timm (ResNet-18, pretrained=false) on ../shared/data/food101_mini
                   when present (else generated shapes): cached features, then the whole network with fp16,
                   channels-last and compile; then test.py

Each step runs in its own process with its own timeout, inside one budget (--budget, 450 s: a GPU machine's call
is cut at 10 minutes); its row says what it read from the experiment's files. A step that fails or times out is a
FAIL row with the last lines of its output, and the run goes on. Prints one Markdown table (paste it into the
issue's note); the exit status is 1 when any step failed. Every step's full output is kept under the work folder
(--work; a temporary one is removed after a run without failures unless --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOOD = ROOT.parent / "shared" / "data" / "food101_mini"
MARK = "GPU_CHECK_RESULT "


@dataclass(frozen=True)
class Step:
    name: str
    module: str  # gpu_check_steps, _speed or _nccl (benchmarks/): imported in the step's own process only
    cuda_only: bool
    timeout_s: int  # on a GPU; the budget left caps it


STEPS = (
    Step("nccl", "gpu_check_nccl", True, 60),
    Step("quickstart", "gpu_check_steps", False, 180),
    Step("quickstart_fp16", "gpu_check_steps", True, 120),
    Step("torchrun_resume", "gpu_check_steps", False, 150),
    Step("loop_ratio", "gpu_check_speed", False, 120),
    Step("augment_vs_gpu", "gpu_check_speed", False, 120),
    Step("transfer_timm", "gpu_check_steps", False, 240),
)


@dataclass
class Row:
    step: str
    status: str
    seconds: float = 0.0
    accuracy: float | None = None
    images_per_s: float | None = None
    details: str = ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and epochs (the test suite's CPU run)")
    parser.add_argument("--only", help="comma-separated step names (default: all)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override added to every train.py and test.py command",
    )
    parser.add_argument("--budget", type=float, default=450, help="seconds for all steps together (default 450)")
    parser.add_argument("--step-timeout", type=float, help="seconds for each step (default: each step's own)")
    parser.add_argument("--workers", type=int, default=4, help="loader.num_workers on the GPU (default 4)")
    parser.add_argument("--data", type=Path, default=FOOD if FOOD.is_dir() else None, help="photos for transfer_timm")
    parser.add_argument(
        "--work", type=Path, help="folder for experiments, caches and step logs (default: a temporary one)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # a step's own process
    args = parser.parse_args(argv)
    known = [s.name for s in STEPS]
    args.steps = [s for s in STEPS if args.only is None or s.name in args.only.split(",")]
    unknown = set(args.only.split(",")) - set(known) if args.only else set()
    if unknown:
        parser.error(f"--only: unknown step(s) {', '.join(sorted(unknown))}; the steps are {', '.join(known)}")
    return args


def run_step(args: argparse.Namespace) -> int:
    """In the step's own process: run it and print its result as one JSON line."""
    import importlib

    step = next(s for s in STEPS if s.name == args.step)
    steps = importlib.import_module("gpu_check_steps")
    setup = steps.Setup(args.device, args.quick, args.work, args.data, tuple(args.set), args.workers)
    try:
        result = getattr(importlib.import_module(step.module), step.name)(setup)
    except steps.StepFailed as exc:
        print(f"FAILED: {exc}", flush=True)
        return 1
    print(MARK + json.dumps(asdict(result)), flush=True)
    return 0


def last_lines(text: str, count: int = 3, width: int = 300) -> str:
    kept = [line.strip()[:width] for line in text.splitlines() if line.strip()]
    return " / ".join(kept[-count:]) or "(no output)"


def launch(step: Step, args: argparse.Namespace, timeout: float) -> Row:
    """The step in a process of its own (its own session: a timeout ends it with everything it started)."""
    log = args.work / "logs" / f"{step.name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--step", step.name, "--device", args.device]
    command += ["--work", str(args.work), "--workers", str(args.workers)]
    command += (["--quick"] if args.quick else []) + (["--data", str(args.data)] if args.data else [])
    command += [f"--set={value}" for value in args.set]
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    seconds = time.perf_counter() - start
    text = log.read_text(errors="replace")
    found = [line for line in text.splitlines() if line.startswith(MARK)]
    if code == 0 and found:
        result = json.loads(found[-1][len(MARK) :])
        details = "; ".join(result.pop("details"))
        return Row(step.name, "OK", seconds, details=details, **result)
    why = f"timed out after {timeout:.0f} s" if code is None else f"exit {code}"
    return Row(step.name, "FAIL", seconds, details=f"{why}: {last_lines(text)}")


def number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table(rows: list[Row]) -> str:
    lines = ["| step | status | seconds | accuracy | img/s | details |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        cells = [r.step, r.status, number(r.seconds, 1), number(r.accuracy, 3), number(r.images_per_s, 0), r.details]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def machine(device: str) -> str:
    """The header line: what ran, without importing torch here (the steps get the whole GPU, and a run starts fast)."""
    from importlib.metadata import version

    gpu = "nvidia-smi not found"
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        gpu = subprocess.run(query, capture_output=True, text=True).stdout.strip().replace("\n", "; ") or gpu
    return (
        f"device {device}: {gpu} | torch {version('torch')} | timm {version('timm')} | "
        f"python {platform.python_version()} | {os.cpu_count()} CPUs | {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.step:
        return run_step(args)
    temporary = args.work is None
    args.work = (args.work or Path(tempfile.mkdtemp(prefix="imgclf_gpu_check_"))).resolve()
    (args.work / "logs").mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    rows: list[Row] = []
    for step in args.steps:
        left = deadline - time.monotonic()
        if step.cuda_only and not args.device.startswith("cuda"):
            rows.append(Row(step.name, "SKIP", details=f"needs CUDA (--device {args.device})"))
        elif left < 10:
            rows.append(Row(step.name, "FAIL", details=f"not run: the {args.budget:.0f} s budget was spent"))
        else:
            rows.append(launch(step, args, min(args.step_timeout or step.timeout_s, left)))
        # each row as soon as it is known: a run cut short from outside still shows what it found
        print("[gpu_check]", table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    failed = any(r.status == "FAIL" for r in rows)
    print(machine(args.device))
    if args.set:
        print("added to every train.py and test.py command (--set):", " ".join(args.set))
    print(table(rows))
    if temporary and not failed and not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    else:
        print(f"step logs and experiments: {args.work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
