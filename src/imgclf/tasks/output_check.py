"""The Hydra callback that refuses a run whose output folder cannot be written (docs/reliability.md J12)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from imgclf.errors import ExperimentError
from imgclf.writable import unwritable


class WritableOutput(Callback):
    """``hydra.callbacks``: before Hydra writes its records and opens its log file in ``hydra.run.dir``
    (``hydra.sweep.dir`` for ``-m``), check that files can be created there (a read-only disk or mount, no
    permission, a file in its place). Otherwise Hydra fails with a traceback ("Unable to configure handler
    'file'"); here it is one line naming the folder, and exit status 1."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(str(config.hydra.run.dir))
        if config.hydra.job.name == "test" and str(config.get("ckpt")) in ("best", "last") and not run_dir.exists():
            # test.py of an experiment never trained: say so before Hydra makes its folder (and leaves it behind)
            _exit(
                ExperimentError(
                    f"no experiment '{config.experiment}' to test: {run_dir} does not exist. Train it first: "
                    f"python train.py -cn={config.hydra.job.config_name} with the same overrides; or test a "
                    "checkpoint file with ckpt=<path to a .pt file>"
                )
            )
        _writable_or_exit(
            run_dir,
            "experiment folder",
            "or put the experiments in another folder: paths.experiments=<folder> (copy the "
            "experiment there first to test it)",
        )

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _writable_or_exit(
            Path(str(config.hydra.sweep.dir)),
            "sweep folder",
            "or sweep into another folder: hydra.sweep.dir=<folder> or paths.experiments=<folder>",
        )


def _writable_or_exit(folder: Path, what: str, elsewhere: str) -> None:
    problem = unwritable(folder)
    if problem is None:
        return
    exc = ExperimentError(
        f"cannot write to the {what} {folder} ({problem}). Runs write their log, checkpoints and "
        f"reports there: make it writable, {elsewhere}"
    )
    _exit(exc)


def _exit(exc: ExperimentError) -> None:
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)  # logging is not set up yet; Hydra would add a traceback
    raise SystemExit(1)
