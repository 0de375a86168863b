"""usage: imgclf-lr-find -cn=<recipe> [key=value ...]

Find a learning rate before training (the range test of fastai's lr_find and Lightning's Tuner.lr_find). Builds
the run of `python train.py -cn=<recipe> [key=value ...]` (the same data, model, optimizer, loss, AMP,
accumulation, clipping and MixUp/CutMix; with trainer.cache_features the head on the cached features) and takes
real training steps at a learning rate growing exponentially, recording the loss, until the loss diverges. It
prints the learning rate halfway along the longest fall of the smoothed loss (fastai's "valley") as the override
to paste, with the steepest fall and a tenth of the lowest point beside it:

    optimizer.lr=<value>

(with a backbone group, its lr keeps its ratio to optimizer.lr), or says why the curve suggests none. Writes
experiments/<experiment>/lr_find.png (the curve, the suggestion marked), lr_find.csv (lr, loss, smoothed) and
the curve to TensorBoard (runs/<experiment>/lr_find). Options:

    lr_find.start=1e-7   lr_find.end=10   the range of learning rates
    lr_find.steps=100                      optimizer steps across it (one batch each, or trainer.accumulate)
    lr_find.smooth=0.98                    beta of the loss's moving average
    lr_find.diverge=4                      stop once the smoothed loss exceeds this many times its lowest

Keeps nothing it trains: no checkpoint, the experiment's files untouched; the experiment need not exist. The
configs are read from ./conf when it holds train.yaml, else from the imgclf checkout's conf/. Exit status 0, or 1
with a one-line reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

from imgclf.cli.common import hydra_front_door

PROGRAM = "imgclf-lr-find"


def main(argv: list[str] | None = None) -> None:
    _run(*hydra_front_door(PROGRAM, __doc__, argv))


def _run(conf: Path, args: list[str]) -> None:
    import hydra
    from omegaconf import DictConfig

    import imgclf.tasks  # noqa: F401  registers the resolvers the YAML uses, before Hydra composes
    from imgclf.cli.exits import exit_on_error, override_hints
    from imgclf.tasks.lr_find_task import lr_find

    @hydra.main(config_path=str(conf), config_name="train", version_base="1.3")
    def job(cfg: DictConfig) -> None:
        found = exit_on_error(lr_find, cfg)
        shown = found.suggestion
        if found.override() is None:
            print(f"{PROGRAM}: no learning rate to suggest: {shown.reason}")
        else:
            print(f"{PROGRAM}: {shown.reason}: lr {shown.lr:.2g}")
            print(
                f"{PROGRAM}: for comparison, steepest fall at lr {shown.steepest:.2g}, lowest loss / 10: {shown.minimum:.2g}"
            )
            print(found.override())
        print(f"{PROGRAM}: curve in {found.plot}")

    sys.argv = [sys.argv[0], *args]  # Hydra reads the command line itself
    with override_hints(args):  # Hydra rejects an unquoted ~ before job runs
        job()


if __name__ == "__main__":
    main()
