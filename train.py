"""Train an experiment: python train.py [-cn=<recipe>] [key=value ...] [-m for sweeps]."""

import hydra
from omegaconf import DictConfig

import imgclf.tasks
from imgclf.cli.exits import exit_on_error, override_hints


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    # Returns the best monitored value, so a sweeper (e.g. Optuna) can optimise it.
    return exit_on_error(imgclf.tasks.train, cfg)


if __name__ == "__main__":
    with override_hints():  # Hydra rejects an unquoted ~ before main runs
        main()
