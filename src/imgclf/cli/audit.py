"""imgclf-audit: find the suspect labels, duplicates and outliers of a folder, as a recipe sees it.

    imgclf-audit -cn=transfer dataset.root=/path/to/photos [key=value ...]

Every labelled image (train and val; test too with audit.include_test=true) is scored by a model that never saw
it (audit.folds-fold cross-validation; with -cn=transfer the frozen features are computed once and each fold
trains a head in seconds; other recipes train the whole network per fold). Writes
experiments/<experiment>/audit/: label_issues.csv (path, split, given, suggested, score: most suspect first),
duplicates.csv, outliers.csv, gallery pictures and summary.md; the experiment's checkpoints are not touched.
Then train without the flagged images: python train.py -cn=<recipe> dataset.root=... dataset.exclude=<label_issues.csv>.

Options of the audit (conf/train.yaml, `audit:`): audit.folds, audit.seed, audit.include_test, audit.rank_by,
audit.duplicate_threshold, audit.duplicate_neighbours, audit.gallery_rows, audit.gallery_pages. Hydra's own flags
(--cfg job, --config-dir DIR, -m) work as with train.py. Exit status 0 when done, 1 for a problem it names, 130/143
when interrupted.
"""

from __future__ import annotations

import argparse
import sys

from imgclf.cli.common import add_version, config_dir


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgclf-audit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-cn", "--config-name", help="the recipe: conf/<name>.yaml (e.g. transfer)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. dataset.root=/data audit.folds=10")
    add_version(parser)
    return parser


def main() -> None:
    if any(arg in ("-h", "--help", "--version") for arg in sys.argv[1:]):
        _parser().parse_args()  # answers and exits before Hydra or torch is imported
    import hydra
    from omegaconf import DictConfig

    import imgclf.tasks  # registers the resolvers the config uses
    from imgclf.cli.exits import exit_on_error, override_hints
    from imgclf.tasks.audit_task import audit

    def run(cfg: DictConfig) -> None:
        exit_on_error(audit, cfg)

    run.__module__ = "audit"  # Hydra names the job (audit.log, .hydra/audit/) after the calling module's file
    entry = hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(run)
    assert imgclf.tasks
    with override_hints():
        entry()


if __name__ == "__main__":
    main()
