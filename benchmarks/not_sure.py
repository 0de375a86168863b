"""An answer of "not sure" measured (issue 31): the threshold chosen on val for precision 0.95, on the test split, and
the out-of-distribution score (``--ood knn`` or ``energy``) against max-softmax on folders of classes the model never
saw.

    python benchmarks/not_sure.py [--recipe transfer] [--data ../shared/data/food101_mini]
                                  [--unseen ../shared/data/flowers5 ...] [--experiment NAME --experiments-dir DIR]
                                  [--ood knn|energy] [--target 0.95] [--ood-keep 0.95] [--unseen-limit 300]
                                  [--keep DIR]
                                  [--override key=value ...]

Without ``--experiment`` it trains ``--recipe`` on ``--data`` with ``calibrate=true abstain.goal=precision
abstain.target=<target> abstain.ood=<ood>`` (train.py fits the temperature and the thresholds on val after training),
then runs test.py: the test report's ``not_sure`` record gives the coverage and the precision of the answered test
images with a bootstrap interval. With ``--experiment`` the existing experiment is reported (test.py with
calibrate=true and the same abstain settings, which store the thresholds in its best.pt). A cheaper recipe for a quick
run: ``--recipe food101_mini_lite0``.

Then the checkpoint's own predictor (``imgclf.inference.Predictor``, the test-time augmentation the thresholds were
chosen with) scores the test images and up to ``--unseen-limit`` images of each unseen folder (seeded sample): the
share answered "not sure" (and why), and the AUROC (scikit-learn's ``roc_auc_score``; known classes positive) of the
stored OOD score, of max-softmax (the baseline) and of the energy score (read in the same pass, for comparison).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from label_noise_pays import command  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
BATCH = 32


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="transfer", help="the -cn recipe trained (default transfer)")
    parser.add_argument("--data", type=Path, default=DATA / "food101_mini", help="the known classes' folder")
    parser.add_argument("--unseen", type=Path, nargs="+", default=[DATA / "flowers5", DATA / "plates"])
    parser.add_argument("--experiment", help="report this experiment instead of training one")
    parser.add_argument("--experiments-dir", type=Path, default=ROOT / "experiments")
    parser.add_argument("--target", type=float, default=0.95, help="abstain.target: the precision kept on val")
    parser.add_argument("--ood", choices=["knn", "energy"], default="knn", help="abstain.ood (default knn)")
    parser.add_argument("--ood-keep", type=float, default=0.95, help="abstain.ood_keep")
    parser.add_argument("--unseen-limit", type=int, default=300, help="images per unseen folder at most (0: all)")
    parser.add_argument("--keep", type=Path, help="work here (kept) instead of a temporary folder")
    parser.add_argument("--override", action="append", default=[], help="extra override for train.py and test.py")
    return parser.parse_args(argv)


def abstain_args(args: argparse.Namespace) -> list[str]:
    return [
        "calibrate=true",
        "abstain.goal=precision",
        f"abstain.target={args.target}",
        f"abstain.ood={args.ood}",
        f"abstain.ood_keep={args.ood_keep}",
    ]


def run_recipe(args: argparse.Namespace, work: Path) -> tuple[Path, dict, float]:
    """train.py (unless --experiment) then test.py; the experiment folder, the test metrics and the seconds."""
    if args.experiment:
        exp_dir, name = args.experiments_dir, args.experiment
        common = [f"-cn={args.recipe}", f"experiment={name}", f"paths.experiments={exp_dir}", *args.override]
        seconds = command([str(ROOT / "test.py")], *common, *abstain_args(args))
    else:
        exp_dir, name = work / "experiments", "not_sure"
        common = [
            f"-cn={args.recipe}",
            f"experiment={name}",
            f"dataset.root={args.data}",
            f"paths.experiments={exp_dir}",
            f"paths.runs={work / 'runs'}",
            *args.override,
        ]
        seconds = command([str(ROOT / "train.py")], *common, *abstain_args(args))
        seconds += command([str(ROOT / "test.py")], *common)
    metrics = json.loads((exp_dir / name / "test" / "metrics.json").read_text())
    return exp_dir / name, metrics, seconds


def images(folder: Path, limit: int, seed: int = 0) -> list[Path]:
    from imgclf.data.folder import walk_images

    files = sorted(Path(p) for p in walk_images(folder))
    if limit and len(files) > limit:
        files = sorted(random.Random(seed).sample(files, limit))
    return files


def score(predictor, files: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Top probability, the stored OOD score, the energy score and the "not sure" reason (None: answered) of every
    file."""
    from imgclf.abstain import reasons
    from imgclf.models.ood_tap import OodTap

    top, ood, energy = [], [], []
    for start in range(0, len(files), BATCH):
        chunk = [predictor.load_image(f) for f in files[start : start + BATCH]]
        with OodTap(predictor.model, "energy", temperature=predictor.temperature) as tap:
            probs, scores = predictor.scores(chunk)
        top.append(probs.numpy().max(1))
        ood.append(scores.numpy())
        energy.append(tap.scores().numpy())
    top_all, ood_all = np.concatenate(top), np.concatenate(ood)
    return top_all, ood_all, np.concatenate(energy), reasons(top_all, ood_all, predictor.abstain)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        work = args.keep or Path(tmp)
        exp, metrics, seconds = run_recipe(args, work)
        section = metrics["not_sure"]
        stored = section["stored"] or {}
        print(
            f"{exp}: train + test {seconds:.0f} s, test accuracy {metrics['accuracy']:.3f} "
            f"({metrics['samples']} images)"
        )
        print(f"stored on val: {json.dumps(stored)}")

        from sklearn.metrics import roc_auc_score

        from imgclf.inference import Predictor
        from imgclf.models.ood_tap import inner_classifier
        from imgclf.training.onnx_twin import faster_backbone

        predictor = Predictor.load(exp / "best.pt", device="cpu", tta=stored.get("tta") or "none")
        # a frozen backbone runs on onnxruntime, as test.py runs it (trainer.frozen_engine=auto)
        twin = faster_backbone(inner_classifier(predictor.model).net, "auto", torch.device("cpu"), None)
        stack.enter_context(twin)
        known_top, known_ood, known_energy, known_why = score(predictor, images(args.data / "test", 0))
        rows = []
        for folder in args.unseen:
            files = images(folder, args.unseen_limit)
            top, ood, energy, why = score(predictor, files)
            labels = np.r_[np.ones(len(known_top)), np.zeros(len(top))]
            rows.append(
                (
                    folder.name,
                    len(files),
                    np.mean([w is not None for w in why]),
                    np.mean([w == "ood" for w in why]),
                    roc_auc_score(labels, np.r_[known_top, top]),
                    roc_auc_score(labels, np.r_[known_ood, ood]),
                    roc_auc_score(labels, np.r_[known_energy, energy]),
                )
            )
    precision = section.get("precision", float("nan"))
    low, high = section.get("precision_ci", [float("nan")] * 2)
    print(
        f"\n| test split of {args.data.name} | images | answered (coverage) | precision of the answered (95% CI) |"
        f"\n|---|---:|---:|---|\n| `{args.recipe}`, threshold for precision {args.target:g} on val | "
        f"{section.get('samples', 0)} | {section.get('answered', 0)} ({section.get('coverage', 0):.3f}) | "
        f"{precision:.3f} ({low:.3f}-{high:.3f}) |"
    )
    print(
        f'\nknown classes\' test images answered "not sure": {np.mean([w is not None for w in known_why]):.3f} '
        f"(by the {args.ood} threshold: {np.mean([w == 'ood' for w in known_why]):.3f})"
    )
    print(
        f'\n| unseen classes | images | answered "not sure" | by the {args.ood} threshold | AUROC max-softmax | '
        f"AUROC {args.ood} | AUROC energy |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    for name, count, unsure, ood, auc_msp, auc_ood, auc_energy in rows:
        print(f"| {name} | {count} | {unsure:.3f} | {ood:.3f} | {auc_msp:.3f} | {auc_ood:.3f} | {auc_energy:.3f} |")
    met = precision >= args.target
    better = all(r[5] > r[4] for r in rows)
    print(
        f"\ntargets: precision of the answered test images >= {args.target:g}: {'met' if met else 'NOT met'} "
        f"({precision:.3f}); {args.ood} AUROC above max-softmax on every unseen folder: "
        f"{'met' if better else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
