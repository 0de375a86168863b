"""usage: imgclf-preview -cn=<recipe> [key=value ...]

See what the model is fed, before training on it. Builds the data of `python train.py -cn=<recipe>
[key=value ...]` (the same splits, image size, cache, augmentation and MixUp/CutMix, the same seed) without
training, and draws the first training batches as the loop receives them into
experiments/<experiment>/preview.png (batch 1) and preview_<n>.png (batch n), each image captioned with its
label (a mixed image with its two classes and their shares). Options:

    preview.batches=N   batches to draw (default 1)
    preview.images=N    at most N images of each batch (default 32)

Writes no checkpoint and removes nothing; the experiment need not exist. The configs are read from ./conf when
it holds train.yaml, else from the imgclf checkout's conf/ (Hydra's --config-dir adds another). Hydra's own
options (--cfg job, --hydra-help) work as with train.py. Exit status 0, or 1 with a one-line reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

from imgclf.cli.common import hydra_front_door

PROGRAM = "imgclf-preview"


def main(argv: list[str] | None = None) -> None:
    _run(*hydra_front_door(PROGRAM, __doc__, argv))


def _run(conf: Path, args: list[str]) -> None:
    import hydra
    from omegaconf import DictConfig

    import imgclf.tasks  # noqa: F401  registers the resolvers the YAML uses, before Hydra composes
    from imgclf.cli.exits import exit_on_error, override_hints
    from imgclf.tasks.preview_task import preview

    @hydra.main(config_path=str(conf), config_name="train", version_base="1.3")
    def job(cfg: DictConfig) -> None:
        exit_on_error(preview, cfg)

    sys.argv = [sys.argv[0], *args]  # Hydra reads the command line itself
    with override_hints(args):  # Hydra rejects an unquoted ~ before job runs
        job()


if __name__ == "__main__":
    main()
