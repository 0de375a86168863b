"""Exit statuses of ``train.py`` and ``test.py``: what a user can fix is one line of text, never a traceback.

1: an :class:`~imgclf.errors.ImgclfError` (bad key, data, checkpoint, busy experiment, training
fault); 130 / 143: stopped by Ctrl-C / SIGTERM (training resumes with the same command). In a
sweep (``-m``), errors propagate instead, so Hydra marks that job failed and runs the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from omegaconf import DictConfig

from imgclf.errors import ImgclfError
from imgclf.tasks.experiment import in_sweep
from imgclf.training.state import Interrupted

log = logging.getLogger("imgclf")
T = TypeVar("T")


def exit_on_error(task: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """``task(cfg)``, with user errors and interrupts turned into a message and an exit status."""
    try:
        return task(cfg)
    except Interrupted as exc:
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:  # before or after training: nothing to save
        log.warning("interrupted")
        raise SystemExit(130) from None
    except ImgclfError as exc:
        if in_sweep():
            raise
        log.error("%s: %s", type(exc).__name__, exc)
        raise SystemExit(1) from None
