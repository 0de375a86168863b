"""``trainer.amp=auto``: the precision this machine trains the run's network fastest in, chosen before any image is
decoded (the ``scratch`` recipe's setting).

Whether bfloat16 pays on a CPU depends on the CPU: with AVX512-BF16 or AMX (oneDNN's bf16 kernels) one optimizer
step of the scratch recipe's network took 0.58x the time of float32 on 2 cores here (docs/recipes.md); without them
bf16 is emulated and slower than float32. So on a CPU both are timed on the run's own step
(:mod:`imgclf.tasks.step_timing`) and bf16 is kept only when it is at least :data:`SPEEDUP` times as fast. On CUDA
bf16 where the GPU has it (Ampere and later), else fp16 with a gradient scaler; other devices train in full
precision. A frozen backbone whose features are computed once trains only its head: full precision. The choice is
written into ``trainer.amp``, so the log, the saved config and the checkpoints say what ran; a resumed run keeps its
checkpoint's.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig

from imgclf.experiment.folder import ExperimentDir
from imgclf.experiment.resume import resumed_config
from imgclf.tasks import build
from imgclf.tasks.step_timing import Measure, measurer
from imgclf.training.device import AMP_MODES
from imgclf.training.distributed import Distributed

log = logging.getLogger(__name__)

SPEEDUP = 1.2  # bf16 must beat float32 by this factor: a smaller gain is within the timing's noise on a busy machine


def applies(cfg: DictConfig) -> bool:
    return cfg.trainer.get("amp") == "auto"


def fit(
    cfg: DictConfig,
    exp: ExperimentDir | None,
    sizes: Sequence[Any],
    *,
    device: torch.device,
    group: Distributed,
    measure: Measure | None = None,
) -> None:
    """Write into ``cfg.trainer.amp`` the precision ``auto`` stands for on ``device`` (a resumed run: its
    checkpoint's). ``exp`` None: nothing to resume (imgclf-lr-find)."""
    if not applies(cfg):
        return
    resumed = None if exp is None else resumed_config(exp, str(cfg.get("resume", "auto")), bool(cfg.get("overwrite")))
    kept = (resumed or {}).get("trainer", {}).get("amp")
    if kept in AMP_MODES:
        cfg.trainer.amp = kept
        log.info("trainer.amp=auto: %s, as the checkpoint this run resumes trained", kept)
        return
    choice, reason = "none", ""
    if device.type == "cuda":
        choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        reason = (
            "this GPU has bfloat16" if choice == "bf16" else "this GPU has no bfloat16; fp16 with a gradient scaler"
        )
    elif device.type != "cpu":
        reason = f"mixed precision on {device.type} is not measured by imgclf"
    elif cfg.model.get("freeze") not in (None, "none"):
        reason = "a frozen backbone: only the head trains"
    else:
        index = 0
        if group.is_main:  # rank 0 measures and decides; every rank trains in the same precision
            size = build.image_size(cfg, build.native_size(cfg), sizes).image_size
            index, reason = _timed(cfg, size, measure or measurer(device))
        index, reason = group.broadcast((index, reason))
        choice = ("none", "bf16")[index]
    cfg.trainer.amp = choice
    log.info("trainer.amp=auto: %s (%s)", choice, reason)


def _timed(cfg: DictConfig, image_size: int, measure: Measure) -> tuple[int, str]:
    """0 (float32) or 1 (bf16), and the timings that decided it."""
    seconds = []
    for amp in ("none", "bf16"):
        trial = copy.deepcopy(cfg)
        trial.trainer.amp = amp
        seconds.append(measure(trial, image_size))
    full, half = seconds
    faster = full / max(half, 1e-9)
    reason = (
        f"one step of {int(cfg.loader.batch_size)} at {image_size} px: float32 {full:.3f} s, bf16 {half:.3f} s, "
        f"{faster:.2f}x; bf16 needs {SPEEDUP}x"
    )
    return int(faster >= SPEEDUP), reason
