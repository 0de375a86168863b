"""The steps of benchmarks/gpu_check.py that run imgclf as its users do: train.py, test.py and torchrun.

Each step runs in a process of its own (gpu_check.py starts it with a timeout) and returns what its row of the
table shows, read from the experiment's files (metrics.jsonl, test/metrics.json, last.pt, train.log). A step
raises :class:`StepFailed` with the last lines of the command that failed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_TARGET = 0.95  # docs/recipes.md: the quickstart's test accuracy target (0.993 measured on the CPU)


class StepFailed(Exception):
    """A step's command failed or its result is wrong; the message ends with what the command printed last."""


@dataclass(frozen=True)
class Setup:
    """What every step knows: the device, the sizes (``quick``: tiny, for the CPU), where outputs go."""

    device: str
    quick: bool
    work: Path
    data: Path | None = None  # a folder of photos for the transfer step (food101_mini); None: generated shapes
    sets: tuple[str, ...] = ()  # overrides added to every train.py / test.py command (--set)
    workers: int = 4

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def timm_model(self) -> str:
        """ResNet-18 on the GPU; timm's own tiny test ResNet on the CPU (ResNet-18 trains at ~10 img/s on 2 busy
        cores)."""
        return "test_resnet" if self.quick else "resnet18"


@dataclass
class Result:
    """One row's numbers; ``details`` says what ran and what was found."""

    accuracy: float | None = None
    images_per_s: float | None = None
    details: list[str] = field(default_factory=list)


def tail(text: str, lines: int = 4) -> str:
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " / ".join(kept[-lines:])


def run_overrides(setup: Setup, experiment: str) -> list[str]:
    """Outputs under the check's own folder, no figures or maps (seconds each, not what is checked here)."""
    return [
        f"device={setup.device}",
        f"experiment={experiment}",
        f"paths.experiments={setup.work / 'experiments'}",
        f"paths.runs={setup.work / 'runs'}",
        f"paths.cache={setup.work / 'cache'}",
        "progress=false",
        "report.figures=false",
        "report.cams=0",
        "report.cams_per_class=0",
        "report.bootstrap=0",
    ]


def accelerated(setup: Setup, amp: str = "bf16", compile: bool = True) -> list[str]:
    """The GPU settings under test; on the CPU (quick) the same keys at values a CPU runs fast and can run."""
    if setup.cuda:
        return [
            f"trainer.amp={amp}",
            "trainer.channels_last=true",
            f"trainer.compile={str(compile).lower()}",
            "loader.pin_memory=true",
            f"loader.num_workers={setup.workers}",
        ]
    # bf16 autocast was 20x slower than fp32 on a CPU without AVX512-BF16; compiling takes minutes; pinning needs CUDA
    return [
        "trainer.amp=none",
        "trainer.channels_last=true",
        "trainer.compile=false",
        "loader.pin_memory=false",
        "loader.num_workers=1",
    ]


def run(command: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    sys.stdout.write(done.stdout[-4000:] + done.stderr[-4000:])
    return done


def entry_point(script: str, config: str, experiment: str, setup: Setup, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / script), f"-cn={config}", *run_overrides(setup, experiment), *extra, *setup.sets]


def checked(done: subprocess.CompletedProcess, what: str) -> None:
    if done.returncode != 0:
        raise StepFailed(f"{what} exited {done.returncode}: {tail(done.stdout + done.stderr)}")


def experiment_dir(setup: Setup, experiment: str) -> Path:
    return setup.work / "experiments" / experiment


def epochs_logged(exp: Path) -> list[dict[str, Any]]:
    path = exp / "metrics.jsonl"
    if not path.exists():
        raise StepFailed(f"no {path} after training")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ran_on(exp: Path, device: str) -> None:
    """train.log names the device the network trained on ("<Net> on cuda -> ..."); a silent fallback fails."""
    log = (exp / "train.log").read_text(errors="replace")
    if f" on {device}" not in log:
        raise StepFailed(f"train.log does not say the network trained on {device}")


def train_and_test(setup: Setup, config: str, experiment: str, *overrides: str) -> tuple[Path, float, float]:
    """train.py then test.py of one experiment; (folder, test accuracy, the last epoch's training images/s)."""
    checked(run(entry_point("train.py", config, experiment, setup, *overrides)), "train.py")
    exp = experiment_dir(setup, experiment)
    ran_on(exp, setup.device)
    checked(run(entry_point("test.py", config, experiment, setup, *overrides)), "test.py")
    accuracy = json.loads((exp / "test" / "metrics.json").read_text())["accuracy"]
    return exp, accuracy, epochs_logged(exp)[-1]["train/images_per_s"]  # the last epoch: compiling is done


def transfer_data(setup: Setup) -> tuple[Path, int, str]:
    """(folder, input size, its name): the photos given (--data) on the GPU, else generated shapes."""
    if setup.data is not None and not setup.quick:
        return setup.data, 128, setup.data.name
    size = 32 if setup.quick else 64
    return setup.work / "shapes", size, "generated shapes (3 classes)"


def planned(setup: Setup) -> dict[str, tuple[str, list[str]]]:
    """Every train.py run of the check: experiment -> (-cn config, the overrides after :func:`run_overrides`).
    tests/test_gpu_check.py composes each of them as train.py would, for the GPU and for the CPU."""
    root, size, _ = transfer_data(setup)
    transfer = [
        "model=timm",
        f"model.name={setup.timm_model}",
        "model.pretrained=false",
        "model.unfreeze_at_epoch=1",  # epoch 1: the head on cached backbone features; then the whole network
        f"dataset.root={root}",
        f"dataset.image_size={size}",
        f"epochs={2 if setup.quick else 3}",
        "trainer.frozen_engine=torch",  # the GPU's engine; auto would take onnxruntime on the CPU
    ]
    return {
        "gc_quickstart": ("quickstart", [*accelerated(setup, amp="auto"), f"epochs={1 if setup.quick else 12}"]),
        "gc_fp16": ("quickstart", [*accelerated(setup, amp="fp16", compile=False), "epochs=3"]),
        "gc_torchrun": ("quickstart", accelerated(setup, compile=False)),  # and epochs=N: stopped, then resumed
        "gc_transfer": ("transfer", [*transfer, *accelerated(setup, amp="fp16")]),
    }


def quickstart(setup: Setup) -> Result:
    """The offline quickstart (digits, small CNN) with ``trainer.amp=auto`` (bf16 on a GPU that has it, else fp16),
    channels-last, compile, pinned memory, workers."""
    config, extra = planned(setup)["gc_quickstart"]
    exp, accuracy, rate = train_and_test(setup, config, "gc_quickstart", *extra)
    found = Result(accuracy, rate, [" ".join(extra)])
    if setup.cuda:
        import torch

        chosen = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if f"trainer.amp=auto: {chosen}" not in (exp / "train.log").read_text(errors="replace"):
            raise StepFailed(f"train.log does not say trainer.amp=auto chose {chosen} on this GPU")
        found.details.append(f"trainer.amp=auto: {chosen}")
    if not setup.quick:
        if accuracy < QUICKSTART_TARGET:
            raise StepFailed(f"test accuracy {accuracy:.3f} below the quickstart's target {QUICKSTART_TARGET}")
        found.details.append(f"target {QUICKSTART_TARGET}: met")
    return found


def quickstart_fp16(setup: Setup) -> Result:
    """fp16 autocast with the gradient scaler, eager (a compile failure elsewhere is not blamed on fp16)."""
    config, extra = planned(setup)["gc_fp16"]
    checked(run(entry_point("train.py", config, "gc_fp16", setup, *extra)), "train.py")
    exp = experiment_dir(setup, "gc_fp16")
    ran_on(exp, setup.device)
    from imgclf.experiment.checkpoint import load_checkpoint

    scaler = load_checkpoint(exp / "last.pt").get("scaler") or {}
    if not scaler.get("scale"):
        raise StepFailed(f"last.pt holds no gradient scaler state ({scaler!r}): fp16 trained without GradScaler")
    epochs = epochs_logged(exp)
    return Result(
        epochs[-1]["val/acc"],
        epochs[-1]["train/images_per_s"],
        ["trainer.amp=fp16, eager; accuracy on val", f"GradScaler scale {scaler['scale']:g} in last.pt"],
    )


def shapes_folder(root: Path, per_class: dict[str, int], size: int) -> Path:
    """Tiny generated photos of 3 classes (a disc, a square, stripes) in root/<split>/<class>/."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for split, count in per_class.items():
        for kind, name in enumerate(("disc", "square", "stripes")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                cy, cx = size / 2 + rng.uniform(-size / 8, size / 8, 2)
                masks = (
                    (yy - cy) ** 2 + (xx - cx) ** 2 < (size / 3) ** 2,
                    (abs(yy - cy) < size / 3) & (abs(xx - cx) < size / 3),
                    (xx // max(size // 8, 1)) % 2 == 0,
                )
                image[masks[kind]] = rng.integers(120, 255, 3, dtype=np.uint8)
                Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def transfer_timm(setup: Setup) -> Result:
    """-cn=transfer with a timm ResNet-18 (pretrained=false: no network; quick: timm's test_resnet): epoch 1 trains
    the head on cached backbone features, the next ones the whole network on images, with fp16 + GradScaler,
    channels-last and compile."""
    root, size, where = transfer_data(setup)
    if root == setup.work / "shapes":
        shapes_folder(root, {"train": 20, "val": 5, "test": 5}, size + 8)
    config, extra = planned(setup)["gc_transfer"]
    _, accuracy, rate = train_and_test(setup, config, "gc_transfer", *extra)
    return Result(accuracy, rate, [f"timm {setup.timm_model} at {size} px on {where}", " ".join(extra[6:])])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_resume(setup: Setup) -> Result:
    """torchrun --nproc_per_node=1 train.py, stopped by SIGTERM once last.pt exists, then the same command resumes
    (one more epoch): metrics.jsonl must hold every epoch once."""
    exp = experiment_dir(setup, "gc_torchrun")

    def command(epochs: int) -> list[str]:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1"]
        launcher += ["--master_addr=127.0.0.1", f"--master_port={free_port()}"]
        config, extra = planned(setup)["gc_torchrun"]
        script = entry_point("train.py", config, "gc_torchrun", setup, *extra)
        return [*launcher, *script[1:], f"epochs={epochs}"]

    first = subprocess.Popen(
        command(500), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while not (exp / "last.pt").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if first.poll() is not None:
        raise StepFailed(
            f"torchrun ended before last.pt was written (exit {first.returncode}): {tail(first.stdout.read())}"
        )
    os.kill(first.pid, signal.SIGTERM)  # torchrun passes it on to its rank
    out, _ = first.communicate(timeout=120)
    print(out[-4000:])
    from imgclf.experiment.checkpoint import load_checkpoint

    state = load_checkpoint(exp / "last.pt")["state"]
    stopped = f"SIGTERM: exit {first.returncode}, last.pt at epoch {state['epoch']} batch {state['step']}"
    resumed = run(command(state["epoch"] + 1))
    checked(resumed, "the resumed torchrun")
    if "resuming gc_torchrun from epoch" not in resumed.stdout + resumed.stderr:
        raise StepFailed(f"the second torchrun did not resume ({stopped})")
    epochs = [e["epoch"] for e in epochs_logged(exp)]
    if epochs != list(range(1, state["epoch"] + 2)):
        raise StepFailed(f"metrics.jsonl epochs {epochs} after {stopped}: expected each of 1..{state['epoch'] + 1}")
    ran_on(exp, setup.device)
    last = epochs_logged(exp)[-1]
    return Result(last["val/acc"], last["train/images_per_s"], [stopped, f"resumed to epoch {epochs[-1]}"])
