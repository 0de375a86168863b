"""What every command-line program shares: ``--version`` and the experiments folder, under one name each.

Kept free of torch so that ``--help`` and ``--version`` answer at once; the programs import their heavy
parts after the command line is parsed.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from imgclf.cli.paths import user_path

# a table cut short by its reader (| head): what `cat` or `grep` give there (128 + SIGPIPE)
EXIT_CLOSED_PIPE = 141


def version() -> str:
    """The installed imgclf version (the package's own when it is run from a checkout that was never installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("imgclf")
    except PackageNotFoundError:
        from imgclf import __version__

        return __version__


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s (imgclf {version()})")


def add_experiments_dir(parser: argparse.ArgumentParser) -> None:
    """``--experiments-dir DIR`` (``--experiments`` is the same option, as serve and leaderboard first spelled it)."""
    parser.add_argument(
        "--experiments-dir",
        "--experiments",
        dest="experiments_dir",
        type=user_path,
        default=Path("experiments"),
        metavar="DIR",
        help="the folder that holds the experiments (default: experiments)",
    )


def add_min_confidence(parser: argparse.ArgumentParser) -> None:
    """``--min-confidence P``: flag, never hide, an answer the model is not sure of (predict and serve)."""
    parser.add_argument(
        "--min-confidence",
        type=float,
        default=None,
        metavar="P",
        help="flag predictions whose probability is below P (0..1)",
    )


def add_no_abstain(parser: argparse.ArgumentParser) -> None:
    """``--no-abstain``: always name a class, ignoring the model's "not sure" thresholds (predict and serve)."""
    parser.add_argument(
        "--no-abstain",
        action="store_true",
        help='always name a class: ignore the model\'s "not sure" thresholds (abstain.* chosen on val)',
    )


ENGINES = ("auto", "onnxruntime", "torch")  # imgclf.training.onnx_twin.ENGINES, spelled out: no torch here


def add_engine(parser: argparse.ArgumentParser) -> None:
    """``--engine``: what a checkpoint's pretrained backbone runs on (predict and serve)."""
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="a checkpoint's pretrained backbone runs on: auto (onnxruntime on a CPU when installed, checked against "
        "PyTorch on the first images; the exported backbone kept in $XDG_CACHE_HOME/imgclf/onnx, default "
        "~/.cache), onnxruntime, or torch. An ONNX model runs as it is",
    )


def engine_block(predictor: object, engine: str) -> AbstractContextManager[object]:
    """The block a predictor runs in: a checkpoint's backbone on ``engine`` (an ONNX model's predictor as it is)."""
    faster = getattr(predictor, "frozen_engine", None)
    return nullcontext() if faster is None else faster(engine, twin_folder())


def twin_folder() -> Path:
    """Where predict and serve keep a checkpoint's backbone exported for onnxruntime (each file keyed by the weights,
    so a retrained checkpoint gets its own)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "imgclf" / "onnx"


def print_table(text: str) -> bool:
    """Print the table; False when stdout was closed before all of it was read (``| head``).

    The rest of the table is dropped quietly, as Unix tools do: stdout then points at /dev/null, so that
    Python's own flush at exit cannot fail again with a second BrokenPipeError (the Python docs' recipe).
    """
    try:
        print(text, flush=True)
        return True
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return False


def config_dir() -> Path:
    """./conf when it holds train.yaml (a project of one's own), else the conf/ of the checkout imgclf runs from."""
    here = Path.cwd() / "conf"
    if (here / "train.yaml").is_file():
        return here
    return Path(__file__).resolve().parents[3] / "conf"


def hydra_front_door(program: str, doc: str, argv: list[str] | None) -> tuple[Path, list[str]]:
    """What a Hydra program (imgclf-preview, imgclf-lr-find) does before importing Hydra and torch: ``--help``
    and ``--version`` answered at once, and the conf/ folder it composes from, or exit 1 saying there is none."""
    args = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(args):
        raise SystemExit(0 if print_table(doc.strip()) else EXIT_CLOSED_PIPE)
    if "--version" in args:
        print(f"{program} (imgclf {version()})")
        raise SystemExit(0)
    conf = config_dir()
    if not (conf / "train.yaml").is_file():
        print(f"{program}: no conf/train.yaml in {Path.cwd()} or {conf.parent}: run it in the imgclf checkout")
        raise SystemExit(1)
    return conf, args
