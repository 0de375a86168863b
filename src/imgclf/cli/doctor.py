"""imgclf-doctor: check a dataset before training on it.

    imgclf-doctor PATH [--json report.json]              a folder (any layout imgclf reads)
    imgclf-doctor -cn plates_tinyvgg [key=value ...]     the dataset of a config, as train.py sees it

Prints counts per split and class, image sizes, unusable files and why, files skipped by
extension, identical files within a split and across splits (leakage). Exit status 0 when
nothing blocks training, 1 when something does.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from imgclf.cli.common import EXIT_CLOSED_PIPE, add_version, print_table
from imgclf.cli.paths import user_path
from imgclf.data.folder import BAD_FILE_POLICIES, FolderSource
from imgclf.errors import ImgclfError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="imgclf-doctor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", nargs="?", help="dataset folder")
    parser.add_argument("-cn", "--config-name", help="check the dataset of conf/<name>.yaml instead")
    parser.add_argument("overrides", nargs="*", help="config overrides (with -cn), e.g. dataset.root=/data")
    parser.add_argument(
        "--config-dir", type=user_path, default=Path("conf"), help="where the configs are (default: conf)"
    )
    parser.add_argument("--json", type=user_path, help="also write the report as JSON to this file")
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--bad-files", choices=BAD_FILE_POLICIES, default="stop")
    parser.add_argument("--cache", type=user_path, default=Path("~/.cache/imgclf"), help="where file reports are kept")
    add_version(parser)
    args = parser.parse_args(argv)
    if args.config_name and args.path is not None:  # with -cn every positional is an override
        args.overrides, args.path = [str(args.path), *args.overrides], None
    if (args.path is None) == (args.config_name is None):
        parser.error("give a dataset folder or -cn <config name>")
    if args.path is not None and args.overrides:
        parser.error("overrides go with -cn")
    args.path = None if args.path is None else user_path(args.path)  # not before: with -cn it is an override
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    # torch (through the cache and the doctor) is imported here, once the command line is known to be good
    from imgclf.data.cache import DecodeCache
    from imgclf.data.doctor import diagnose, format_report, write_report

    try:
        if args.config_name:
            report = _from_config(args)
        else:
            source = FolderSource(
                str(args.path.expanduser().resolve()),
                val_fraction=args.val_fraction,
                test_fraction=args.test_fraction,
                split_seed=args.split_seed,
            )
            report = diagnose(source, DecodeCache(args.cache, mode="none"), bad_files=args.bad_files)
    except ImgclfError as exc:
        print(f"imgclf-doctor: {exc}", file=sys.stderr)
        return 1
    if args.json:  # first: a reader that stops early (| head) never costs the file
        write_report(report, args.json)
        print(f"report written to {args.json}", file=sys.stderr)
    if not print_table(format_report(report)):
        return EXIT_CLOSED_PIPE
    return 1 if report["blocking"] else 0


def _from_config(args: argparse.Namespace) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.errors import OverrideParseException

    import imgclf.tasks as tasks
    from imgclf.cli.exits import tilde_hint

    config_dir = args.config_dir.expanduser().resolve()
    if not (config_dir / f"{args.config_name}.yaml").is_file():
        raise ImgclfError(f"no config {args.config_name}.yaml in {config_dir}; use --config-dir")
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        try:
            cfg = compose(config_name=args.config_name, overrides=[f"experiment={args.config_name}", *args.overrides])
        except OverrideParseException as exc:  # Hydra's grammar: one line, and how to quote a ~ it rejected
            raise ImgclfError("\n".join(filter(None, [str(exc), tilde_hint(args.overrides)]))) from None
    return tasks.doctor(cfg, project_root=config_dir.parent)


if __name__ == "__main__":
    sys.exit(main())
