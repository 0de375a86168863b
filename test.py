"""Evaluate an experiment's checkpoint: python test.py [-cn=<recipe>] [ckpt=best|last|<path>] [split=test]."""

import hydra
from omegaconf import DictConfig

import imgclf.tasks
from imgclf.cli.exits import exit_on_error, override_hints


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    exit_on_error(imgclf.tasks.test, cfg)


if __name__ == "__main__":
    with override_hints():  # Hydra rejects an unquoted ~ before main runs
        main()
