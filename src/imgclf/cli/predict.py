"""predict.py: classify image files with a trained experiment's checkpoint, or its ONNX export.

    python predict.py PATH... (--experiment NAME | --checkpoint FILE | --model model.onnx) [--top-k K]
                      [--category-names names.json] [--output out.csv|out.json] [--plot out.png]
                      [--min-confidence P] [--no-abstain] [--device auto] [--batch-size N] [--max-pixels N]
                      [--engine auto|onnxruntime|torch]

PATH: image files, folders (searched recursively; hidden folders skipped) or glob patterns
(quote them: "photos/**/*.jpg"). Class names, input size, normalization and the calibrated
temperature come from the checkpoint. --model runs a file written by imgclf-export on onnxruntime
without importing torch: everything it needs (classes, sizes, temperature, test-time augmentation,
pixel limit, "not sure" thresholds) is inside the .onnx file. A model given thresholds on val (abstain.*, see
docs/not_sure.md) answers "not sure: top guesses ..." for an image below them (pred empty, not_sure set in --output);
--no-abstain names a class anyway. --min-confidence P only flags answers below P, the user's own line. A file
that cannot be read, or that would decode to more than --max-pixels (checked from its header, before decoding),
gets an error row and the exit status is 1 at the end; every other file is still classified. Exit status 2: the
command line or the checkpoint cannot be used. --output and --plot are written before the table is printed: when
stdout is closed early (`predict.py ... --output p.csv | head`), p.csv still has every row, the rest
of the table is dropped and the exit status is 141, as for cat or grep there.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.abstain import reasons, scored
from imgclf.cli.common import (
    EXIT_CLOSED_PIPE,
    add_engine,
    add_experiments_dir,
    add_min_confidence,
    add_no_abstain,
    add_version,
    engine_block,
    print_table,
)
from imgclf.cli.experiments import best_checkpoint
from imgclf.cli.paths import user_path
from imgclf.cli.predict_output import EXIT_USAGE, Prediction, table, write_outputs
from imgclf.data.class_names import KEY_READINGS, keyed_names
from imgclf.data.folder import walk_images
from imgclf.data.images import IMAGE_EXTENSIONS, MAX_PIXELS, PREDICT_MAX_PIXELS
from imgclf.errors import ImgclfError

# imgclf.models.classifier.TTA_MODES, spelled out: importing that module imports torch, which --model must not
# (tests/test_export.py keeps the two equal)
TTA_MODES = ("none", "flip")

GLOB_CHARS = frozenset("*?[")
PLOT_ROWS = 12  # images per page of --plot
DEFAULT_TOP_K = 5
EXIT_BAD_FILES = 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "paths",
        nargs="+",
        type=os.path.expanduser,
        metavar="PATH",
        help="image files, folders or glob patterns (~ expanded, quoted or not)",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", metavar="NAME", help="use <experiments-dir>/NAME/best.pt")
    source.add_argument("--checkpoint", type=user_path, metavar="FILE", help="a checkpoint file (best.pt, last.pt)")
    source.add_argument(
        "--model",
        type=user_path,
        metavar="ONNX",
        help="a model.onnx written by imgclf-export: runs on onnxruntime, without torch",
    )
    add_experiments_dir(parser)
    parser.add_argument(
        "--top-k",
        type=int,
        default=None,
        metavar="K",
        help=f"classes to show per image (default {DEFAULT_TOP_K}, at most the class count)",
    )
    parser.add_argument(
        "--category-names",
        type=user_path,
        metavar="JSON",
        help="JSON object mapping class names (or class indices) to display names",
    )
    parser.add_argument(
        "--category-keys",
        choices=KEY_READINGS,
        default="auto",
        help="how the keys of --category-names are read: name (class folder names), index (0-based "
        "positions in the checkpoint's class list) or auto (default): keys that are class names "
        "are names, keys that are all indices and no class name are indices, and keys that "
        "read both ways with different classes (numeric folders 1, 10, 2: key 1 is class 10 "
        "by index) are refused until you choose",
    )
    parser.add_argument(
        "--output", type=user_path, metavar="FILE", help="write the predictions to a .csv or .json file"
    )
    parser.add_argument(
        "--plot",
        type=user_path,
        metavar="PNG",
        help=f"draw each image with a bar chart of its top-k ({PLOT_ROWS} per page: out.png, out-2.png, ...)",
    )
    add_min_confidence(parser)
    add_no_abstain(parser)
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:1, mps")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per forward pass")
    add_engine(parser)
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default=None,
        help="test-time augmentation: flip averages the probabilities of each image and its mirror "
        "image (two forward passes; default none). With --model it is part of the export "
        "(imgclf-export --tta flip)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        metavar="N",
        help=f"refuse images that would decode to more pixels (default {PREDICT_MAX_PIXELS:_}, or "
        f"the limit stored in a --model file; at most {MAX_PIXELS:_}); camera JPEGs decode at "
        "reduced scale and pass",
    )
    add_version(parser)
    args = parser.parse_args(argv)
    if args.model is not None and args.model.suffix.lower() in (".pt", ".pth"):
        parser.error(
            f"--model {args.model}: a PyTorch checkpoint; pass it as --checkpoint, or export it with "
            "imgclf-export and pass the model.onnx"
        )
    if args.max_pixels is not None and not 1 <= args.max_pixels <= MAX_PIXELS:
        parser.error(
            f"--max-pixels {args.max_pixels}: must be between 1 and {MAX_PIXELS} (the training limit, "
            "Pillow's decompression-bomb level)"
        )
    if args.top_k is not None and args.top_k < 1:
        parser.error(f"--top-k {args.top_k}: must be at least 1")
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: must be at least 1")
    if args.min_confidence is not None and not 0.0 <= args.min_confidence <= 1.0:
        parser.error(f"--min-confidence {args.min_confidence}: must be a probability between 0 and 1")
    if args.output is not None and args.output.suffix.lower() not in (".csv", ".json"):
        parser.error(f"--output {args.output}: the file must end in .csv or .json")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        parser.error(f"--plot {args.plot}: the file must end in .png")
    return args


def checkpoint_path(args: argparse.Namespace) -> Path:
    """The checkpoint to use; a missing experiment's message lists the ones there are."""
    if args.checkpoint is not None:
        return args.checkpoint
    return best_checkpoint(args.experiments_dir, args.experiment, "--checkpoint FILE, --experiments-dir DIR")


def find_images(specs: Sequence[str]) -> tuple[list[str], list[Prediction]]:
    """The image files named by ``specs`` (in the order given, each once), and error records for
    specs that name nothing."""
    files: dict[str, None] = {}
    missing = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = list(walk_images(path))  # the rules of the training data's scan
            if not found:
                missing.append(
                    Prediction(spec, error=f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder")
                )
        elif path.exists():
            found = [spec]  # named explicitly: tried whatever its extension
        elif GLOB_CHARS & set(spec):
            found = sorted(
                p
                for p in glob.glob(spec, recursive=True)
                if os.path.isfile(p) and Path(p).suffix.lower() in IMAGE_EXTENSIONS
            )
            if not found:
                missing.append(Prediction(spec, error="the pattern matches no image file"))
        else:
            missing.append(Prediction(spec, error="no such file or folder"))
            found = []
        files.update(dict.fromkeys(found))
    return list(files), missing


def display_names(predictor: Any, mapping_file: Path | None, keys: str = "auto") -> dict[str, str]:
    """Class name -> display name: ``--category-names`` if given (its keys read as ``--category-keys`` says),
    else the checkpoint's own."""
    if mapping_file is None:
        return dict(predictor.display_names)
    try:
        mapping = json.loads(mapping_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImgclfError(f"--category-names {mapping_file}: cannot be read as JSON ({exc})") from exc
    if not isinstance(mapping, dict) or not all(isinstance(v, (str, int, float)) for v in mapping.values()):
        raise ImgclfError(
            f"--category-names {mapping_file}: expected a JSON object of names, "
            'e.g. {"21": "fire lily", "3": "canterbury bells"}'
        )
    classes = predictor.classes
    names = keyed_names({str(k): str(v) for k, v in mapping.items()}, classes, keys, f"--category-names {mapping_file}")
    unnamed = [c for c in classes if c not in names]
    if unnamed:
        warn(
            f"--category-names {mapping_file} has no name for {len(unnamed)} class(es) "
            f"({', '.join(unnamed[:5])}{', ...' if len(unnamed) > 5 else ''}); their class names are shown"
        )
    return names


def predict(
    predictor: Any,
    files: Sequence[str],
    top_k: int,
    batch_size: int,
    min_confidence: float | None = None,
    abstain: bool = True,
) -> Iterator[tuple[Prediction, Any]]:
    """Yield each file's :class:`Prediction` (in order) with its decoded image (None when unreadable).
    Files are decoded in threads (Pillow releases the GIL) and classified a batch at a time; with ``abstain``, the
    model's own "not sure" thresholds (:mod:`imgclf.abstain`) mark the images it does not answer."""
    record = getattr(predictor, "abstain", None) if abstain else None
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            images = list(pool.map(_try_load, [predictor] * len(chunk), chunk))
            good = [image for image in images if not isinstance(image, str)]
            probs, ood = scored(predictor, good, record)
            whys = iter(reasons(probs.max(axis=1), ood, record) if len(good) else [])
            scores, rows = iter(ood if ood is not None else [None] * len(good)), iter(probs)
            for path, image in zip(chunk, images, strict=True):
                if isinstance(image, str):
                    yield Prediction(path, error=image), None
                    continue
                top = top_classes(np.asarray(next(rows)), predictor.classes, top_k)
                low = min_confidence is not None and top[0][1] < min_confidence
                score = next(scores)
                yield Prediction(path, top=top, low_confidence=low, not_sure=next(whys), ood_score=score), image


def top_classes(probs: np.ndarray, classes: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most probable (class, probability), highest first (the first listed class wins a tie)."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [(classes[int(i)], float(probs[i])) for i in order]


def load_predictor(args: argparse.Namespace) -> Any:
    """The torch :class:`~imgclf.inference.Predictor` of a checkpoint, or for ``--model`` the
    :class:`~imgclf.deploy.onnx_predictor.OnnxPredictor` (this path never imports torch)."""
    if args.model is None:
        from imgclf.inference import Predictor

        return Predictor.load(
            checkpoint_path(args),
            device=args.device,
            tta=args.tta or "none",
            max_pixels=args.max_pixels or PREDICT_MAX_PIXELS,
        )
    from imgclf.deploy.onnx_predictor import OnnxPredictor

    predictor = OnnxPredictor.load(args.model, max_pixels=args.max_pixels, device=args.device)
    if args.tta is not None and args.tta != predictor.tta:
        raise ImgclfError(
            f"--tta {args.tta}: {args.model} was exported with test-time augmentation "
            f"{predictor.tta!r}, which is part of the model; export it again with "
            f"imgclf-export --tta {args.tta}, or leave --tta out"
        )
    return predictor


def _try_load(predictor: Any, path: str) -> Any:
    """The image tensor, or the reason it cannot be read (a string: the error record)."""
    try:
        return predictor.load_image(path)
    except ImgclfError as exc:
        return str(exc).removeprefix(f"{path}: ")
    except OSError as exc:  # unreadable file (permissions, vanished since it was listed)
        return exc.strerror or str(exc)


def warn(message: str) -> None:
    print(f"predict.py: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        predictor = load_predictor(args)
        names = display_names(predictor, args.category_names, args.category_keys)
    except ImgclfError as exc:
        print(f"predict.py: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    num_classes = len(predictor.classes)
    top_k = min(args.top_k or DEFAULT_TOP_K, num_classes)
    if args.top_k is not None and args.top_k > num_classes:
        warn(f"--top-k {args.top_k} is more than the model's {num_classes} classes; showing {num_classes}")
    files, missing = find_images(args.paths)
    predictions, pages = list(missing), [[]]
    run = predict(predictor, files, top_k, args.batch_size, args.min_confidence, abstain=not args.no_abstain)
    with engine_block(predictor, args.engine):
        for prediction, image in run:
            predictions.append(prediction)
            if args.plot is not None and image is not None:
                if len(pages[-1]) == PLOT_ROWS:
                    pages.append([])
                pages[-1].append((prediction, image))
    # the files first: a reader that leaves early (`| head`) must not cost the user the CSV
    failed = write_outputs(args, predictor, predictions, pages, names, top_k)
    shown = print_table(table(predictions, names, args.min_confidence))
    if failed is not None:
        return failed
    bad = [p for p in predictions if p.error is not None]
    low = sum(p.low_confidence for p in predictions)
    summary = f"{len(predictions) - len(bad)} image(s) classified with {predictor.checkpoint}"
    summary += f", {low} below --min-confidence {args.min_confidence:g}" if args.min_confidence is not None else ""
    unsure = sum(p.not_sure is not None for p in predictions)
    summary += f', {unsure} answered "not sure" (--no-abstain: always a class)' if unsure else ""
    summary += f"; {len(bad)} could not be read (ERROR rows)" if bad else ""
    print(summary, file=sys.stderr)
    if not shown:
        return EXIT_CLOSED_PIPE
    return EXIT_BAD_FILES if bad else 0


def run() -> None:
    """The console entry point: ``main`` with Ctrl-C as exit status 130 instead of a traceback."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("predict.py: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    run()
