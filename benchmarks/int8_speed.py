"""INT8 against fp32 on onnxruntime: throughput at batch 1 and 32 on this CPU, and accuracy on val and test.

Exports an experiment with `imgclf-export --quantize int8` (into a temporary folder, or `--export DIR` reuses an
export that holds model.onnx and model.int8.onnx), then times both files on onnxruntime sessions with the same
intra-op threads (`--threads`, default 2), alternating the two models and keeping the best of `--repeats` timed
rounds (the machine is shared: the best round is the one least disturbed). Accuracy: each model's top class on the
experiment's val and test images (splits.csv), decoded once by the export's own predictor.

Target (issue 31): INT8 >= 1.5x fp32 images/s at batch 1 and 32, val accuracy within 1 point of fp32.

    python benchmarks/int8_speed.py --experiment food_lite0 [--experiments-dir DIR] [--export DIR] [--repeats 5]
                                    [--threads 2] [--calibration-images 200] [--weight-bits 7|8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from timing import best_of  # noqa: E402

from imgclf.deploy.metadata import INPUT_NAME, OUTPUT_NAME  # noqa: E402
from imgclf.deploy.onnx_predictor import OnnxPredictor  # noqa: E402
from imgclf.deploy.quantize import INT8_FILE, Int8Gate, split_samples  # noqa: E402

BATCHES = (1, 32)
TARGET = 1.5


def session(path: Path, threads: int):  # noqa: ANN201  (onnxruntime.InferenceSession)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def throughput(models: dict[str, Path], images: np.ndarray, threads: int, repeats: int) -> dict[int, dict[str, float]]:
    """Images per second of each model at each of :data:`BATCHES`: the best of ``repeats`` rounds, alternated."""
    sessions = {name: session(path, threads) for name, path in models.items()}
    rates: dict[int, dict[str, float]] = {}
    for batch in BATCHES:
        feed = {INPUT_NAME: np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))}
        calls = max(1, 64 // batch)  # about 64 images per timed round at batch 1, two batches at 32
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for s in sessions.values():
            s.run([OUTPUT_NAME], feed)  # warm-up: onnxruntime plans its buffers on the first run
        for _ in range(repeats):
            for name, s in sessions.items():
                times[name].append(best_of(1, lambda s=s, feed=feed, calls=calls: run(s, feed, calls)))
        rates[batch] = {name: batch * calls / min(t) for name, t in times.items()}
    return rates


def run(s, feed: dict[str, np.ndarray], calls: int) -> None:  # noqa: ANN001
    for _ in range(calls):
        s.run([OUTPUT_NAME], feed)


def accuracy(predictor: OnnxPredictor, images: list[np.ndarray], labels: np.ndarray) -> float:
    probs = np.concatenate([predictor.probabilities(images[i : i + 32]) for i in range(0, len(images), 32)])
    return float((probs.argmax(1) == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--experiments-dir", type=Path, default=ROOT / "experiments")
    parser.add_argument("--export", type=Path, help="an export folder with model.onnx and model.int8.onnx")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-images", type=int, default=200)
    parser.add_argument("--weight-bits", type=int, choices=(7, 8), default=7, help="imgclf-export --int8-weight-bits")
    parser.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=Int8Gate.max_accuracy_drop,
        help="the export's INT8 gate (default 0.01); raise it to time an INT8 file the gate would refuse (the "
        "accuracies are printed either way)",
    )
    args = parser.parse_args()
    experiment = args.experiments_dir / args.experiment
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.export
        if folder is None:
            from imgclf.deploy.export import export

            folder = Path(tmp) / "export"
            gate = Int8Gate(max_accuracy_drop=args.max_accuracy_drop)
            result = export(
                experiment / "best.pt",
                folder,
                quantize="int8",
                calibration_images=args.calibration_images,
                int8_gate=gate,
                int8_weight_bits=args.weight_bits,
            )
            gate = result.parity["int8"]
            print(
                f"exported {experiment.name}: int8 gate on {gate['val_images']} val images: top class agrees on "
                f"{gate['argmax_agreement']:.1%}, accuracy {gate['int8_accuracy']:.1%} "
                f"vs fp32 {gate['fp32_accuracy']:.1%}"
            )
        models = {"fp32": folder / "model.onnx", "int8": folder / INT8_FILE}
        predictors = {name: OnnxPredictor.load(path) for name, path in models.items()}
        fp32 = predictors["fp32"]
        print(
            f"\n{experiment.name}: {fp32.image_size} px, {len(fp32.classes)} classes, tta {fp32.tta}; "
            f"files {models['fp32'].stat().st_size / 1e6:.1f} MB fp32, "
            f"{models['int8'].stat().st_size / 1e6:.1f} MB int8"
        )
        decoded: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}
        for split in ("val", "test"):
            rows = split_samples(experiment / "splits.csv", fp32.classes, split)
            decoded[split] = ([fp32.load_image(p) for p, _ in rows], np.array([label for _, label in rows]))
        for split, (images, labels) in decoded.items():
            if len(images):
                accs = {name: accuracy(p, images, labels) for name, p in predictors.items()}
                print(
                    f"{split} accuracy ({len(images)} images): fp32 {accs['fp32']:.4f}, int8 {accs['int8']:.4f} "
                    f"({(accs['int8'] - accs['fp32']) * 100:+.1f} points)"
                )
        images = np.stack(decoded["val"][0][:32] or decoded["test"][0][:32])
        rates = throughput(models, images, args.threads, args.repeats)
        print(f"\nonnxruntime, {args.threads} intra-op threads, best of {args.repeats} alternated rounds:")
        print("| batch | fp32 images/s | int8 images/s | int8 / fp32 |")
        print("|---:|---:|---:|---:|")
        for batch, rate in rates.items():
            print(f"| {batch} | {rate['fp32']:.1f} | {rate['int8']:.1f} | {rate['int8'] / rate['fp32']:.2f}x |")
        print(f"target: >= {TARGET}x at batch 1 and 32")


if __name__ == "__main__":
    main()
