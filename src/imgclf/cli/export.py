"""imgclf-export: a trained experiment as one self-contained model file, checked against PyTorch.

    imgclf-export (--experiment NAME | --checkpoint FILE) [--experiments-dir DIR] [--format onnx|torchscript]
                  [--tta none|flip] [--output DIR] [--exporter auto|dynamo|legacy] [--max-pixels N]
                  [--parity-samples N] [--quantize none|int8] [--calibration-images N]
                  [--int8-weight-bits 7|8] [--int8-min-agreement F] [--int8-max-accuracy-drop F]

Writes <experiment>/export/ (or --output): model.onnx (uint8 NCHW images in, any batch size; normalization,
the calibrated temperature and softmax inside; probabilities out; classes, sizes and the pixel limit in its
metadata), parity.json (the export against PyTorch on the experiment's val images and random inputs) and
model_card.md / model_card.json. The folder is replaced only when parity holds (every probability within
1e-4, the same top class); otherwise the exit status is 1 and nothing named model.onnx is left.

--quantize int8 adds model.int8.onnx: statically quantized for CPUs, calibrated on the experiment's training images,
kept only when on val its top class agrees with model.onnx's on >= 85% of the images and its accuracy is at most
1 point lower (both numbers in parity.json and the model card).

Classify with the export, without torch: python predict.py --model experiments/NAME/export/model.onnx PATH...
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from imgclf.cli.common import add_experiments_dir, add_version
from imgclf.cli.experiments import best_checkpoint
from imgclf.cli.paths import user_path
from imgclf.data.images import MAX_PIXELS, PREDICT_MAX_PIXELS
from imgclf.errors import ImgclfError

EXIT_FAILED = 1
# what an export to each format imports (the dynamo exporter needs onnxscript; parity runs on onnxruntime)
DEPLOY_PACKAGES = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "torchscript": ()}
TTA_MODES = ("none", "flip")  # imgclf.models.classifier.TTA_MODES (a test keeps them equal); no torch for --help
# imgclf.deploy.quantize's defaults (a test keeps them equal): --help imports neither torch nor onnxruntime
CALIBRATION_IMAGES, MIN_AGREEMENT, MAX_ACCURACY_DROP = 200, 0.85, 0.01
WEIGHT_BITS = (7, 8)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from imgclf.deploy.metadata import TOLERANCE

    parser = argparse.ArgumentParser(
        prog="imgclf-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", metavar="NAME", help="export <experiments-dir>/NAME/best.pt")
    source.add_argument("--checkpoint", type=user_path, metavar="FILE", help="a checkpoint file (best.pt, last.pt)")
    add_experiments_dir(parser)
    parser.add_argument(
        "--format",
        choices=("onnx", "torchscript"),
        default="onnx",
        help="onnx (default; runs on onnxruntime without torch) or torchscript (torch.jit.load)",
    )
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default=None,
        help="fold test-time augmentation into the model: flip averages each image and its mirror "
        "(default: the tta the checkpoint's config evaluated with, as test.py does)",
    )
    parser.add_argument(
        "--output",
        type=user_path,
        metavar="DIR",
        help="the export folder (default: export/ beside best.pt, export-<name>/ for another file)",
    )
    parser.add_argument(
        "--exporter",
        choices=("auto", "dynamo", "legacy"),
        default="auto",
        help="ONNX exporter: dynamo (torch.export, torch's default), legacy (TorchScript-based), "
        "auto (dynamo, legacy if it fails; default)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=PREDICT_MAX_PIXELS,
        metavar="N",
        help=f"the pixel limit stored in the model for its predictor (default {PREDICT_MAX_PIXELS:_})",
    )
    parser.add_argument(
        "--parity-samples",
        type=int,
        default=500,
        metavar="N",
        help="val images in the parity check (default 500; 0: all)",
    )
    parser.add_argument(
        "--quantize",
        choices=("none", "int8"),
        default="none",
        help="int8: also write model.int8.onnx, statically quantized for CPUs (ONNX only; default none)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=CALIBRATION_IMAGES,
        metavar="N",
        help=f"training images (a seeded sample) that calibrate the INT8 model (default {CALIBRATION_IMAGES})",
    )
    parser.add_argument(
        "--int8-weight-bits",
        type=int,
        choices=WEIGHT_BITS,
        default=7,
        help="7 (default): reduce_range weights, right on every x86 CPU; 8: the full int8 range, closer to fp32, "
        "for CPUs with VNNI (AVX512-VNNI, AVX-VNNI, AMX) or ARM, where 7-bit products would not saturate anyway",
    )
    parser.add_argument(
        "--int8-min-agreement",
        type=float,
        default=MIN_AGREEMENT,
        metavar="F",
        help=f"the INT8 gate: its top class equals fp32's on at least this share of val (default {MIN_AGREEMENT})",
    )
    parser.add_argument(
        "--int8-max-accuracy-drop",
        type=float,
        default=MAX_ACCURACY_DROP,
        metavar="F",
        help=f"the INT8 gate: its val accuracy at most this below fp32's (default {MAX_ACCURACY_DROP}: 1 point)",
    )
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help=argparse.SUPPRESS)
    add_version(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.max_pixels <= MAX_PIXELS:
        parser.error(f"--max-pixels {args.max_pixels}: must be between 1 and {MAX_PIXELS}")
    if args.parity_samples < 0:
        parser.error(f"--parity-samples {args.parity_samples}: must be 0 (all) or more")
    if args.quantize == "int8" and args.format != "onnx":
        parser.error(f"--quantize int8 with --format {args.format}: INT8 models are ONNX; use --format onnx")
    if args.calibration_images < 1:
        parser.error(f"--calibration-images {args.calibration_images}: must be 1 or more")
    if not 0 <= args.int8_min_agreement <= 1:
        parser.error(f"--int8-min-agreement {args.int8_min_agreement}: a share between 0 and 1")
    if not 0 <= args.int8_max_accuracy_drop <= 1:
        parser.error(f"--int8-max-accuracy-drop {args.int8_max_accuracy_drop}: a share between 0 and 1")
    return args


def locate(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """(checkpoint, experiment folder, export folder)."""
    if args.experiment is not None:
        checkpoint = best_checkpoint(args.experiments_dir, args.experiment, "--checkpoint FILE, --experiments-dir DIR")
        experiment = checkpoint.parent
    else:
        checkpoint = args.checkpoint
        if not checkpoint.is_file():
            raise ImgclfError(f"no checkpoint {checkpoint}: pass an existing .pt file or --experiment NAME")
        experiment = checkpoint.parent
    default = "export" if checkpoint.name == "best.pt" else f"export-{checkpoint.stem}"
    return checkpoint, experiment, args.output or experiment / default


def missing_packages(fmt: str) -> list[str]:
    """The deploy extra's packages an export to ``fmt`` needs and this environment lacks."""
    import importlib.util

    return [name for name in DEPLOY_PACKAGES[fmt] if importlib.util.find_spec(name) is None]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_packages(args.format)
    if missing:
        print(
            f"imgclf-export: error: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed; "
            "install the export's packages with pip install -e '.[deploy]'",
            file=sys.stderr,
        )
        return EXIT_FAILED
    logging.basicConfig(level=logging.WARNING, format="imgclf-export: %(levelname)s %(message)s")
    try:
        # torch is imported here, once the command line is known to be good
        from imgclf.deploy.export import export
        from imgclf.deploy.quantize import Int8Gate

        checkpoint, experiment, out = locate(args)
        tta = args.tta or "as evaluated"  # None: export() takes the checkpoint's own, from the checkpoint it reads
        print(f"exporting {checkpoint} ({args.format}, tta {tta}) ...", file=sys.stderr)
        result = export(
            checkpoint,
            out,
            fmt=args.format,
            tta=args.tta,
            exporter=args.exporter,
            max_pixels=args.max_pixels,
            parity_samples=args.parity_samples,
            tolerance=args.tolerance,
            experiment=experiment,
            quantize=args.quantize,
            calibration_images=args.calibration_images,
            int8_gate=Int8Gate(args.int8_min_agreement, args.int8_max_accuracy_drop),
            int8_weight_bits=args.int8_weight_bits,
        )
    except ImgclfError as exc:
        print(f"imgclf-export: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("imgclf-export: interrupted; nothing was exported", file=sys.stderr)
        return 130
    parity = result.parity
    print(
        f"wrote {result.folder}: {result.model.name} ({parity['exporter']} exporter, tta {parity['tta']}), parity.json, "
        "model_card.md, model_card.json"
    )
    print(
        f"parity with PyTorch on {parity['samples']} samples ({parity['val_images']} val images, "
        f"{parity['random_images']} random): max |difference| {parity['max_abs_diff']:.2e}, top class agrees on "
        f"{parity['argmax_agreement']:.0%}"
    )
    if result.int8 is not None:
        int8 = parity["int8"]
        print(
            f"{result.int8.name} against {result.model.name} on {int8['val_images']} val images: top class agrees on "
            f"{int8['argmax_agreement']:.1%}, accuracy {int8['int8_accuracy']:.1%} against {int8['fp32_accuracy']:.1%}"
        )
    if args.format == "onnx":
        print(f"classify without torch: python predict.py --model {result.int8 or result.model} PATH...")
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
