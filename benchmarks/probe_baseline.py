"""A frozen-feature baseline in the same run: how does imgclf compare with logistic regression on
frozen EfficientNet-Lite0 features, on the same split of the same image folder?

    python benchmarks/probe_baseline.py PATH [--recipe transfer] [--seeds K] [--split-seed N]
                                             [--experiments-dir experiments] [--name PREFIX]
                                             [--override key=value ...] [--json FILE]
    python benchmarks/probe_baseline.py PATH --experiment experiments/<name> [--json FILE]

By default imgclf runs as a user runs it, once per split seed N (``--split-seed`` .. ``--split-seed``
+ K - 1, so 0..K-1 by default):

    python train.py -cn=<recipe> dataset.root=PATH experiment=<PREFIX>-seed<N>
                    paths.experiments=<dir> dataset.split_seed=N [overrides]
    python test.py  (the same arguments)

(PREFIX defaults to ``probe-<folder name>``; a finished experiment is not trained again.) With
``--experiment DIR`` an existing, tested experiment is used as it is. Either way the split is the
experiment's own ``splits.csv`` and imgclf's accuracy is ``DIR/test/metrics.json``'s ``accuracy``.

The baseline: every image decoded by imgclf's loader (RGB, EXIF applied), shorter side resized to
224 (bilinear, antialiased), centre-cropped to 224x224, normalized as Lite0 expects (mean 0.5,
std 0.5), through the frozen ImageNet EfficientNet-Lite0 up to its pooled 1280 features;
``make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))`` fitted on train + val and
scored on test. No tuning, no augmentation, no test-time flips.

Why this classifier, measured on food101_mini (fit on train+val 450, test 150 photos), test accuracy:
with the scaler C=1 0.793, C=0.1 0.800, C=0.01 0.793, C=10 0.773; without it C=1 0.767, C=0.1 0.780,
C=0.01 0.793. The spread is two or three test photos (1/150 = 0.007 each), so the standard setting stays.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F
from tqdm import tqdm

from imgclf.data.folder import Splits
from imgclf.data.images import load_image
from imgclf.data.splits_file import read_splits
from imgclf.errors import ImgclfError
from imgclf.models.efficientnet_lite import EfficientNetLite, LiteFeatures

ROOT = Path(__file__).resolve().parents[1]  # where train.py and test.py are
SIZE = 224


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", metavar="PATH", type=Path, help="the image folder")
    parser.add_argument("--experiment", type=Path, help="a trained and tested imgclf experiment folder on PATH")
    parser.add_argument("--recipe", default="transfer", help="imgclf config to train with (-cn)")
    parser.add_argument(
        "--experiments-dir",
        type=Path,
        default=Path("experiments"),
        help="paths.experiments of the runs (relative to the current folder)",
    )
    parser.add_argument("--name", help="experiment name prefix (default probe-<folder name>)")
    parser.add_argument("--split-seed", type=int, default=0, help="first split seed (dataset.split_seed)")
    parser.add_argument("--seeds", type=int, default=1, help="how many split seeds, from --split-seed on")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra override for train.py and test.py (repeatable)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per Lite0 batch")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the numbers to FILE")
    return parser.parse_args(argv)


def run_imgclf(
    path: Path, recipe: str, experiment: str, experiments_dir: Path, split_seed: int, overrides: Sequence[str]
) -> Path:
    """Train and test one imgclf experiment as a user would; its folder."""
    args = [
        f"-cn={recipe}",
        f"dataset.root={path}",
        f"experiment={experiment}",
        f"paths.experiments={experiments_dir}",
        f"dataset.split_seed={split_seed}",
        *overrides,
    ]
    for script in ("train.py", "test.py"):
        print(f"$ python {script} {' '.join(args)}", flush=True)
        code = subprocess.run([sys.executable, script, *args], cwd=ROOT).returncode
        if code:
            raise SystemExit(f"probe_baseline: {script} failed with exit status {code} (its messages are above)")
    return experiments_dir / experiment


def read_experiment(folder: Path, path: Path) -> tuple[Splits, dict]:
    """The experiment's splits and test metrics, checked to be about ``path``."""
    metrics_file, splits_file = folder / "test" / "metrics.json", folder / "splits.csv"
    if not metrics_file.is_file():
        raise SystemExit(
            f"probe_baseline: {metrics_file} not found: the experiment has no test metrics (run test.py on it first)"
        )
    if not splits_file.is_file():
        raise SystemExit(f"probe_baseline: {splits_file} not found: not a trained imgclf experiment")
    metrics = json.loads(metrics_file.read_text())
    if Path(metrics["data_root"]).resolve() != path:
        raise SystemExit(f"probe_baseline: {folder} was tested on {metrics['data_root']}, not {path}")
    splits, _ = read_splits(splits_file, metrics["classes"])  # metrics.json lists the checkpoint's classes
    return splits, metrics


def preprocess(file: str) -> torch.Tensor:
    """One image as Lite0's (3, 224, 224) float input."""
    img = F.center_crop(F.resize(load_image(file), SIZE, InterpolationMode.BILINEAR, antialias=True), SIZE)
    x = F.pil_to_tensor(img).float() / 255
    return F.normalize(x, EfficientNetLite.input_mean, EfficientNetLite.input_std)


class Features:
    """Frozen Lite0 features per file, each file computed once per run (seeds share most files)."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.net: torch.nn.Module | None = None  # loaded on first use, after the experiment was checked
        self.done: dict[str, np.ndarray] = {}

    def __call__(self, files: Sequence[str]) -> np.ndarray:
        todo = list(dict.fromkeys(f for f in files if f not in self.done))
        if self.net is None:
            self.net = LiteFeatures("lite0", pretrained=True).eval()
        with torch.inference_mode():
            for start in tqdm(range(0, len(todo), self.batch_size), desc="Lite0 features", unit="batch"):
                batch = todo[start : start + self.batch_size]
                out = self.net(torch.stack([preprocess(f) for f in batch])).numpy()
                self.done.update(zip(batch, out))
        return np.stack([self.done[f] for f in files])


def baseline_accuracy(splits: Splits, features: Features) -> float:
    """Logistic regression on frozen features: fitted on train + val, its accuracy on test."""
    fit = splits.samples["train"] + splits.samples.get("val", [])
    test = splits.samples["test"]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    clf.fit(features([p for p, _ in fit]), [label for _, label in fit])
    return float(clf.score(features([p for p, _ in test]), [label for _, label in test]))


def compare(folder: Path, path: Path, features: Features) -> dict:
    """One row of the table: baseline and imgclf test accuracy on the experiment's split."""
    splits, metrics = read_experiment(folder, path)
    if not splits.samples.get("test"):
        raise SystemExit(f"probe_baseline: {folder / 'splits.csv'} has no test images")
    baseline = baseline_accuracy(splits, features)
    return {
        "experiment": str(folder),
        "baseline_accuracy": baseline,
        "imgclf_accuracy": metrics["accuracy"],
        "ratio": metrics["accuracy"] / baseline if baseline else float("nan"),
        "test_images": len(splits.samples["test"]),
        "imgclf_test_images": metrics["samples"],
    }


def table(rows: Sequence[dict], mean: dict) -> str:
    lines = [f"{'experiment':<32} {'baseline':>9} {'imgclf':>8} {'ratio':>7} {'test':>6}"]
    for row in [*rows, mean] if len(rows) > 1 else rows:
        lines.append(
            f"{Path(row['experiment']).name:<32} {row['baseline_accuracy']:>9.4f} "
            f"{row['imgclf_accuracy']:>8.4f} {row['ratio']:>7.3f} {row['test_images']:>6}"
        )
    return "\n".join(lines)


def mean_row(rows: Sequence[dict]) -> dict:
    return {
        "experiment": f"mean of {len(rows)}",
        **{k: statistics.fmean(r[k] for r in rows) for k in ("baseline_accuracy", "imgclf_accuracy", "ratio")},
        "test_images": round(statistics.fmean(r["test_images"] for r in rows)),
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.path.is_dir():
        raise SystemExit(f"probe_baseline: {args.path} is not a folder")
    if args.experiment is not None and args.seeds != 1:
        raise SystemExit("probe_baseline: --experiment is one split; --seeds applies only without it")
    path = args.path.resolve()
    features = Features(args.batch_size)
    rows = []
    for seed in range(args.split_seed, args.split_seed + args.seeds):
        if args.experiment is not None:
            folder = args.experiment
        else:
            name = f"{args.name or 'probe-' + path.name}-seed{seed}"
            folder = run_imgclf(path, args.recipe, name, args.experiments_dir.resolve(), seed, args.override)
        try:
            rows.append(compare(folder, path, features))
        except ImgclfError as exc:  # e.g. splits.csv names files that are gone
            raise SystemExit(f"probe_baseline: {exc}") from None
        if rows[-1]["imgclf_test_images"] != rows[-1]["test_images"]:
            print(
                f"warning: imgclf scored {rows[-1]['imgclf_test_images']} test images, splits.csv lists "
                f"{rows[-1]['test_images']}",
                file=sys.stderr,
            )
    mean = mean_row(rows)
    print(f"\nfrozen Lite0 + logistic regression (train+val -> test) vs imgclf on {path}\n{table(rows, mean)}")
    if args.json:
        args.json.write_text(json.dumps({"path": str(path), "rows": rows, "mean": mean}, indent=2) + "\n")


if __name__ == "__main__":
    main()
