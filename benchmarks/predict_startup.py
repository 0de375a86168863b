"""predict.py's cold start for one image, over `python -c "import torch, torchvision"`, in the same run.

Both commands run as fresh processes, alternated, several times; the medians and their ratio are
printed (target: predict <= 1.5x the bare imports). predict needs a checkpoint: by default a
TinyVGG on the quickstart's digits is trained for one epoch into a temporary folder (seconds);
`--experiment NAME` or `--checkpoint FILE` measures a model of yours instead (a larger network
adds the time to build it and read its weights).

    python benchmarks/predict_startup.py [--repeats 7] [--experiment NAME | --checkpoint FILE] [--image FILE]
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


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def train_tiny(folder: Path) -> Path:
    """One epoch of the quickstart with TinyVGG at 32 px: a real checkpoint in seconds."""
    subprocess.run([sys.executable, "train.py", "model=tinyvgg", "epochs=1", "progress=false",
                    "experiment=startup", f"paths.experiments={folder / 'experiments'}",
                    f"paths.runs={folder / 'runs'}", f"paths.cache={folder / 'cache'}"],
                   cwd=ROOT, check=True, capture_output=True)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--experiment")
    source.add_argument("--checkpoint", type=Path)
    parser.add_argument("--image", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = (["--experiment", args.experiment] if args.experiment
                 else ["--checkpoint", str(args.checkpoint or train_tiny(folder))])
        image = args.image or sample_image(folder)
        baseline = [sys.executable, "-c", "import torch, torchvision"]
        predict = [sys.executable, "predict.py", str(image), *model, "--device", "cpu"]
        seconds(baseline), seconds(predict)  # warm the page cache for both
        times: dict[str, list[float]] = {"baseline": [], "predict": []}
        for _ in range(args.repeats):
            times["baseline"].append(seconds(baseline))
            times["predict"].append(seconds(predict))
    base, pred = statistics.median(times["baseline"]), statistics.median(times["predict"])
    ratio = pred / base
    print(f"import torch, torchvision: median {base:.2f} s over {args.repeats} runs "
          f"({min(times['baseline']):.2f}-{max(times['baseline']):.2f})")
    print(f"predict.py, one image:     median {pred:.2f} s over {args.repeats} runs "
          f"({min(times['predict']):.2f}-{max(times['predict']):.2f})")
    print(f"ratio {ratio:.2f}x (target <= {TARGET}x): {'met' if ratio <= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
