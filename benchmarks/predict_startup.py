"""predict.py's cold start for one image, over `python -c "import torch, torchvision"`, in the same run; then the
ONNX export's cold start (predict.py --model, no torch) and its throughput against eager torch.

Every command runs as a fresh process, alternated, several times; medians and ratios are printed. Targets:
predict with a checkpoint <= 1.5x the bare imports; predict with the exported model.onnx <= 0.3x. predict needs
a checkpoint: by default a TinyVGG on the quickstart's digits is trained for one epoch into a temporary folder
(seconds); `--experiment NAME` or `--checkpoint FILE` measures a model of yours instead (a larger network adds
the time to build it and read its weights). Either is exported with imgclf-export for the ONNX runs.

Throughput: an EfficientNet-Lite0 (random weights: speed does not depend on them) at 224 px, eager torch
(inference mode) against onnxruntime on the same CPU threads, at batch 1 and 32 (`--throughput-model` for
another option of conf/model, `--no-throughput` to skip).

    python benchmarks/predict_startup.py [--repeats 7] [--experiment NAME | --checkpoint FILE] [--image FILE]
                                         [--throughput-model lite0] [--no-throughput]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.5
ONNX_TARGET = 0.3
BATCHES = (1, 32)
THROUGHPUT_SIZE = 224


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def train_tiny(folder: Path) -> Path:
    """One epoch of the quickstart with TinyVGG at 32 px: a real checkpoint in seconds."""
    subprocess.run(
        [
            sys.executable,
            "train.py",
            "model=tinyvgg",
            "epochs=1",
            "progress=false",
            "experiment=startup",
            f"paths.experiments={folder / 'experiments'}",
            f"paths.runs={folder / 'runs'}",
            f"paths.cache={folder / 'cache'}",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return folder / "experiments" / "startup" / "best.pt"


def sample_image(folder: Path) -> Path:
    """A real photo from ../shared/data if there is one, else a digit from scikit-learn, as a PNG."""
    shared = sorted((ROOT.parent / "shared" / "data").glob("plates/train/*/*.jpg"))
    if shared:
        return shared[0]
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digit = (load_digits().images[0] * 255 / 16).astype(np.uint8)
    path = folder / "digit.png"
    Image.fromarray(digit).resize((64, 64)).save(path)
    return path


def export_onnx(checkpoint: Path, folder: Path) -> Path:
    """imgclf-export of ``checkpoint`` into ``folder``; returns its model.onnx."""
    subprocess.run(
        [sys.executable, "-m", "imgclf.cli.export", "--checkpoint", str(checkpoint), "--output", str(folder)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return folder / "model.onnx"


def cold_starts(commands: dict[str, list[str]], repeats: int) -> dict[str, list[float]]:
    """Each command ``repeats`` times, alternated (after one warm-up run each for the page cache)."""
    for command in commands.values():
        seconds(command)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, command in commands.items():
            times[name].append(seconds(command))
    return times


def report_cold_starts(times: dict[str, list[float]], repeats: int) -> None:
    labels = {
        "baseline": "import torch, torchvision:",
        "predict": "predict.py, one image:",
        "onnx": "predict.py --model, one image:",
    }
    for name, values in times.items():
        print(
            f"{labels[name]:<32} median {statistics.median(values):.2f} s over {repeats} runs "
            f"({min(values):.2f}-{max(values):.2f})"
        )
    base = statistics.median(times["baseline"])
    for name, target in (("predict", TARGET), ("onnx", ONNX_TARGET)):
        ratio = statistics.median(times[name]) / base
        print(f"{name} ratio {ratio:.2f}x (target <= {target}x): {'met' if ratio <= target else 'NOT met'}")


def throughput(option: str, repeats: int, folder: Path) -> None:
    """Images per second of eager torch and onnxruntime on one model, at each of :data:`BATCHES`."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from helpers import compose_cfg
    from imgclf.deploy.export import export
    from imgclf.deploy.onnx_predictor import OnnxPredictor
    from imgclf.experiment.checkpoint import save_atomic
    from imgclf.models.classifier import Classifier

    cfg = compose_cfg(
        "train", ["experiment=x", f"model={option}", "dataset.num_classes=5", f"dataset.image_size={THROUGHPUT_SIZE}"]
    )
    for key, offline in (("pretrained", False), ("weights", None)):
        if key in cfg.model:
            cfg.model[key] = offline
    model = Classifier(instantiate(cfg.model), [0.5] * 3, [0.5] * 3).eval()
    save_atomic(
        {
            "model": model.state_dict(),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "class_names": list("abcde"),
            "image_size": THROUGHPUT_SIZE,
            "mean": [0.5] * 3,
            "std": [0.5] * 3,
        },
        folder / "throughput.pt",
    )
    onnx = OnnxPredictor.load(export(folder / "throughput.pt", folder / "throughput-export").model)
    print(f"\nthroughput, {option} at {THROUGHPUT_SIZE} px, {torch.get_num_threads()} torch threads:")
    for batch in BATCHES:
        images = np.random.default_rng(0).integers(0, 256, (batch, 3, THROUGHPUT_SIZE, THROUGHPUT_SIZE), np.uint8)
        tensor = torch.from_numpy(images)

        def eager(tensor: torch.Tensor = tensor) -> None:
            with torch.inference_mode():
                torch.softmax(model(tensor), 1)

        def runtime(images: np.ndarray = images) -> None:
            onnx.probabilities(list(images))

        rates = {name: batch / best_time(run, repeats) for name, run in (("torch", eager), ("onnx", runtime))}
        print(
            f"  batch {batch:>2}: eager torch {rates['torch']:7.1f} images/s, onnxruntime {rates['onnx']:7.1f} "
            f"images/s: {rates['onnx'] / rates['torch']:.2f}x"
        )


def best_time(run: object, repeats: int) -> float:
    """The median of ``repeats`` timed calls after one warm-up call."""
    run()  # type: ignore[operator]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--experiment")
    source.add_argument("--checkpoint", type=Path)
    parser.add_argument("--image", type=Path)
    parser.add_argument("--throughput-model", default="lite0", help="an option of conf/model (default lite0)")
    parser.add_argument("--no-throughput", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = (
            Path("experiments") / args.experiment / "best.pt"
            if args.experiment
            else args.checkpoint or train_tiny(folder)
        )
        image = args.image or sample_image(folder)
        model = export_onnx(ROOT / checkpoint, folder / "export")
        commands = {
            "baseline": [sys.executable, "-c", "import torch, torchvision"],
            "predict": [sys.executable, "predict.py", str(image), "--checkpoint", str(checkpoint), "--device", "cpu"],
            "onnx": [sys.executable, "predict.py", str(image), "--model", str(model)],
        }
        report_cold_starts(cold_starts(commands, args.repeats), args.repeats)
        if not args.no_throughput:
            throughput(args.throughput_model, max(3, args.repeats), folder)


if __name__ == "__main__":
    main()
