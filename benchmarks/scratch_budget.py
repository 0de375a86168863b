"""Does ``-cn=scratch`` keep its clock and beat a hand-written loop given the same time? (issue 30's targets)

    python benchmarks/scratch_budget.py PATH [--limit N] [--size S] [--budget MINUTES] [--seed 0]
                                             [--test-share 0.15] [--keep DIR] [--override key=value ...]

PATH is copied to a work folder as ``train/<class>/`` and ``test/<class>/`` (label_noise_pays.py's ``split_copy``:
a folder without ``test/`` gets a seeded, stratified ``--test-share`` carved out, 15% as in imgclf's own split;
``--limit`` keeps that many images). ``--size S`` then downscales every copied photo to S x S px (shorter side to
S, centre kept, saved as PNG): the "<= 5,000 images at <= 32 px" folders of the issue, made from the shared
photos (flowers5 and food101_mini at 32 px, which nobody tuned ``scratch`` to). Then, in this order, each a fresh
process:

1. ``python train.py -cn=scratch dataset.root=<copy>`` with the recipe's own ``trainer.budget`` (15 minutes;
   ``--budget`` passes ``trainer.budget=<minutes>`` for a quick smoke run), timed from launch to exit, then
   ``python test.py -cn=scratch ...`` (its test accuracy, flip TTA as the recipe says);
2. the hand loop below (``hand_loop``, plain PyTorch, no imgclf), given train.py's wall time: the CNN shape of the
   reference project in /work/shared/seeds/004 (three blocks of conv-BN-ReLU, conv-BN-ReLU, max-pool, dropout;
   widths 32/64/128 here, the seed names none; a dense layer), pixels scaled to 0..1 as the seed does, pad-crop
   (4 px, reflect) + horizontal flip, label smoothing 0.1, AdamW (weight decay 0.05) + OneCycle (max lr 0.005),
   batch 64, on all of ``train/`` (imgclf carves its val split from it and trains on 85%), tested on the same
   ``test/`` at the size imgclf chose (read from the experiment's ``config.yaml``: shorter side to it, centre
   crop). Its plan: after decoding, 3 warm and 10 timed steps on a throwaway copy of the model give the seconds
   per epoch, the time left (less an estimate of its test pass) becomes the number of epochs, and OneCycle is
   laid over exactly those; it stops early only if the time runs out (and says so). Its wall time runs from its
   launch (Python and torch start-up included, as train.py's) to the end of its last epoch.

It prints one table and whether the targets hold: train.py's wall time within 5% of its budget and never over by
more than one epoch (ending sooner is right only when the run reached the recipe's ``epochs``, 100); a higher test
accuracy than the hand loop's; and, on flowers5 as it is (no ``--size`` or ``--limit``), test accuracy >= 0.78.

Measured in full (2026-12-07 afternoon, quiet machine, flowers5 as it is, ``--test-share 0.15``): imgclf 0.684 test
accuracy in 886 s of its 900 s budget (28 epochs, 27-30 s each), the hand loop 0.669 in 756 s (11 epochs): the clock
and "beats the hand loop" hold, 0.78 on flowers5 does not.

Under load (2026-12-07, one process spinning on a core beside it all along; flowers5 ``--limit 1000 --budget 3``,
850 train, 150 test photos at 64 px): imgclf 184 s of 180 s (+2.0%, an epoch 8.7 s; 9 re-plans between 13 and 18
epochs, 17 run), test accuracy 0.573; the hand loop 0.547 in 182 s (7 epochs).

Measured (2026-12-07) as smoke runs only, on 2 CPU cores at a load average of 7.2-7.6 (two other agents and a CI
run), with ``--test-share 0.2``: they show that the script works, not whether the targets hold.

| folder (``--size 32``) | run | test accuracy | wall time | budget | epochs |
|---|---|---|---|---|---|
| flowers5 ``--limit 300`` (240 train, 60 test) | imgclf ``-cn=scratch`` | 0.200 | 88 s | 1 min | 1 (26.9 s) |
| | hand loop | 0.317 | 68 s | 88 s given | 2 |
| flowers5 ``--limit 1000`` (800 train, 200 test) | imgclf ``-cn=scratch`` | 0.200 | 130 s | 2 min | 1 (74.6 s) |
| | hand loop | 0.490 | 133 s | 130 s given | 3 |

What they show beyond that: train.py goes over by what lies outside ``trainer.budget``'s clock, which starts in
``tasks.train``: the interpreter, imports and Hydra before it (30-38 s here from launch to the first log line) and
the exit after it. The 2-minute run had spent 69 s on its clock at its 10th step and ended 22 s later (91 s), 130 s
after launch: 39 s unseen (the 1-minute run: 51 s on its clock, 88 s after launch, 37 s unseen); on a 15-minute
budget that alone is 4% of the 5% allowed. And per step (batch 64 at 32 px, both timed in one process under the
same load) the recipe's SmallResNet (widths 32/64/128, two blocks) costs about twice the seed CNN (4.1-5.3 s against
2.1-2.7 s), so the hand loop gets about twice the epochs in the same time.

The full runs of the ``--size 32`` folders (2026-12-07 evening, quiet machine but for about a minute of tests beside
the flowers5 run's first four minutes):

| folder (``--size 32``) | run | test accuracy | wall time | budget | epochs |
|---|---|---|---|---|---|
| food101_mini (450 train, 150 test) | imgclf ``-cn=scratch`` | **0.507** | 355 s | 15 min (ended at ``epochs``) | 100 |
| | hand loop | 0.460 | 306 s | 355 s given | 161 |
| flowers5 (3,668 train, 649 test) | imgclf ``-cn=scratch`` | 0.686 | 891 s (-1.1%) | 15 min | 28 (23.9 s each) |
| | hand loop | **0.738** | 749 s | 891 s given | 51 |

So the clock holds on both, and "beats the hand loop" holds on food101_mini but **not** on flowers5 at 32 px: where
the budget, not ``epochs``, ends the run, the seed CNN's cheaper step (about half the recipe's) buys 51 epochs against
28, and wins by 5 points.

With ``trainer.amp=auto`` (2026-12-08, quiet machine, which ran float32 about twice as fast as the day before: the
recipe chose bf16, 1.56x and 1.68x faster on its timed step, and kept two blocks):

| folder (``--size 32``) | run | test accuracy | wall time | budget | epochs |
|---|---|---|---|---|---|
| food101_mini | imgclf ``-cn=scratch`` | **0.487** | 134 s | 15 min (ended at ``epochs``) | 100 |
| | hand loop | 0.413 | 134 s | 134 s given | 100 |
| flowers5 | imgclf ``-cn=scratch`` | 0.757 | 873 s (-3.0%, ended at ``epochs``) | 15 min | 100 |
| | hand loop | **0.766** | 879 s | 873 s given | 96 |

The clock holds on both and imgclf wins on food101_mini; on flowers5 at 32 px the hand loop stays ahead by 6 of 649
photos. The commands:

    python benchmarks/scratch_budget.py ../shared/data/flowers5 --keep /tmp/scratch_flowers5
    python benchmarks/scratch_budget.py ../shared/data/flowers5 --size 32 --keep /tmp/scratch_flowers5_32
    python benchmarks/scratch_budget.py ../shared/data/food101_mini --size 32 --keep /tmp/scratch_food_32
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from label_noise import images_by_class  # noqa: E402
from label_noise_pays import split_copy  # noqa: E402

RECIPE = "scratch"
FLOWERS5_TARGET = 0.78
BUDGET_SLACK = 0.05  # the wall time may differ from the budget by this share
PLAN = re.compile(r"budget \S+ min: (?:new )?plan (\d+) epochs of \d+ steps, about ([\d.]+) s each")
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]", re.MULTILINE)  # Hydra's log lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="an image folder (train/ and test/ of class folders, or class folders)")
    parser.add_argument("--limit", type=int, help="keep this many images of the folder (spread over its classes)")
    parser.add_argument("--size", type=int, help="downscale the copied photos to SIZE x SIZE px first")
    parser.add_argument("--budget", type=float, help="trainer.budget in minutes (default: the recipe's own)")
    parser.add_argument("--seed", type=int, default=0, help="the carved test split; the hand loop's seed")
    parser.add_argument(  # 0.15: flowers5's 0.78 target was measured on imgclf's own 15% test split (649 photos)
        "--test-share", type=float, default=0.15, help="test share carved from a folder without test/"
    )
    parser.add_argument("--keep", type=Path, help="work here (kept) instead of a temporary folder")
    parser.add_argument("--override", action="append", default=[], help="extra override for train.py and test.py")
    return parser.parse_args(argv)


def downscale(folder: Path, size: int) -> None:
    """Every image under ``folder`` as a ``size`` x ``size`` PNG (shorter side to ``size``, centre kept)."""
    from PIL import Image, ImageOps

    for classes in images_by_class(folder / "train"), images_by_class(folder / "test"):
        for paths in classes.values():
            for path in paths:
                with Image.open(path) as image:
                    small = ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.LANCZOS)
                path.unlink()
                small.save(path.with_suffix(".png"))


# both contenders' OpenMP threads wait as imgclf's do (imgclf/__init__.py sets PASSIVE unless the user chose): the
# hand loop does not import imgclf, and the comparison is of the training loops, not of this setting
SAME_THREADS = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def run(script: str, args: Sequence[str], log: Path) -> float:
    """One of imgclf's entry points in a fresh process, its output in ``log``; its seconds."""
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(
            [sys.executable, str(ROOT / script), *args, "progress=false"],
            cwd=ROOT,
            env={**SAME_THREADS, "HYDRA_FULL_ERROR": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{script} {' '.join(args)} failed ({done.returncode}):\n{log.read_text()[-3000:]}")
    return seconds


def imgclf_scratch(work: Path, data: Path, args: argparse.Namespace) -> dict:
    """train.py then test.py with the scratch recipe: test accuracy, wall time, budget, epochs, input size."""
    common = [
        f"-cn={RECIPE}",
        "experiment=scratch_budget",
        f"dataset.root={data}",
        f"paths.experiments={work / 'experiments'}",
        f"paths.runs={work / 'runs'}",
        f"paths.cache={work / 'cache'}",
        *([f"trainer.budget={args.budget:g}"] if args.budget else []),
        *args.override,
    ]
    launched = time.time()
    wall = run("train.py", common, work / "train.log")
    run("test.py", common, work / "test.log")
    exp = work / "experiments" / "scratch_budget"
    config = yaml.safe_load((exp / "config.yaml").read_text())
    epochs = [json.loads(line)["epoch"] for line in (exp / "metrics.jsonl").read_text().splitlines() if line.strip()]
    log = (work / "train.log").read_text()
    plans, first_line = PLAN.findall(log), STAMP.search(log)
    return {
        "accuracy": json.loads((exp / "test" / "metrics.json").read_text())["accuracy"],
        "wall": wall,
        "budget": float(config["trainer"].get("budget") or math.nan) * 60,
        "epochs": max(epochs),
        "max_epochs": int(config["epochs"]),
        "epoch_seconds": float(plans[-1][1]) if plans else math.nan,
        "image_size": int(config["dataset"]["image_size"]),
        "plans": [int(epochs) for epochs, _ in plans],
        # from launch to train.py's first log line: interpreter, imports and Hydra, before the budget's clock starts
        "startup": datetime.strptime(first_line[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() - launched
        if first_line
        else math.nan,
    }


def hand(data: Path, image_size: int, seconds: float, seed: int) -> dict:
    """The hand loop in a fresh process, given ``seconds`` from its launch: test accuracy, wall time, epochs."""
    launched = time.time()
    args = [str(data), str(image_size), str(launched + seconds), str(seed)]
    command = [sys.executable, __file__, "--hand", *args]
    done = subprocess.run(command, cwd=ROOT, env=SAME_THREADS, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the hand loop failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "wall": result.pop("trained_at") - launched}


def hand_loop(data: str, image_size: str, until: str, seed: str) -> None:
    """What a user writes in ~60 lines of plain PyTorch (no imgclf); prints its result as one JSON line."""
    import torch
    from PIL import Image, ImageOps
    from torch import nn
    from torch.nn import functional as F

    torch.manual_seed(int(seed))
    size, until = int(image_size), float(until)

    def load(folder: Path, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pictures, labels = [], []
        for label, name in enumerate(classes):
            for path in sorted((folder / name).iterdir()):
                with Image.open(path) as image:
                    square = ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
                pictures.append(torch.frombuffer(bytearray(square.tobytes()), dtype=torch.uint8).view(size, size, 3))
                labels.append(label)
        return torch.stack(pictures).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)

    def block(cin: int, cout: int, drop: float) -> list[nn.Module]:
        conv = lambda i: [nn.Conv2d(i, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]  # noqa: E731
        return [*conv(cin), *conv(cout), nn.MaxPool2d(2), nn.Dropout(drop)]

    def augment(x: torch.Tensor) -> torch.Tensor:  # pad-crop (4 px, reflect) + horizontal flip, per image
        padded, n = F.pad(x, (4, 4, 4, 4), mode="reflect"), len(x)
        dx, dy = torch.randint(0, 9, (n,)).tolist(), torch.randint(0, 9, (n,)).tolist()
        crops = torch.stack([padded[i, :, dy[i] : dy[i] + size, dx[i] : dx[i] + size] for i in range(n)])
        return torch.where(torch.rand(n, 1, 1, 1) < 0.5, crops.flip(3), crops)

    classes = sorted(p.name for p in (Path(data) / "train").iterdir() if p.is_dir())
    train_x, train_y = load(Path(data) / "train", classes)
    test_x, test_y = load(Path(data) / "test", classes)
    model = nn.Sequential(
        *block(3, 32, 0.2), *block(32, 64, 0.3), *block(64, 128, 0.4), nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(128 * (size // 8) ** 2, 128), nn.ReLU(), nn.Linear(128, len(classes)),
    )  # fmt: skip
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    batches = lambda: torch.randperm(len(train_x)).split(64)  # noqa: E731

    def step(net: nn.Module, opt: torch.optim.Optimizer, idx: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(augment(train_x[idx].float() / 255)), train_y[idx]).backward()
        opt.step()

    # the plan: 3 warm and 10 timed steps on a throwaway copy, the time left (less the test pass) as epochs
    probe = copy.deepcopy(model).train()
    probe_opt = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=0.05)
    order = torch.randperm(len(train_x)).repeat(13 * 64 // len(train_x) + 1)[: 13 * 64].split(64)
    for i, idx in enumerate(order):
        if i == 3:
            start = time.perf_counter()
        step(probe, probe_opt, idx)
    step_seconds = (time.perf_counter() - start) / 10
    steps = len(batches())
    test_seconds = step_seconds / 3 * len(test_x) / 64
    epochs = max(1, math.floor((until - time.time() - test_seconds) / (step_seconds * steps)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.005, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.005, total_steps=epochs * steps)
    done = 0
    while done < epochs and (done == 0 or time.time() < until):
        model.train()
        for idx in batches():
            step(model, optimizer, idx)
            scheduler.step()
        done += 1
    trained_at = time.time()
    model.eval()
    with torch.no_grad():
        hits = sum(
            (model(x.float() / 255).argmax(1) == y).sum().item() for x, y in zip(test_x.split(256), test_y.split(256))
        )
    print(json.dumps({"accuracy": hits / len(test_x), "epochs": done, "planned": epochs, "trained_at": trained_at}))


def budget_holds(result: dict) -> tuple[bool, str]:
    """Within 5% of the budget and never over by more than one epoch; sooner only when ``epochs`` was reached."""
    wall, budget, epoch = result["wall"], result["budget"], result["epoch_seconds"]
    over = wall - budget
    capped = result["epochs"] >= result["max_epochs"]
    holds = wall <= budget * (1 + BUDGET_SLACK) and over <= epoch and (capped or wall >= budget * (1 - BUDGET_SLACK))
    sign = "over" if over > 0 else "under"
    note = f"train.py {wall:.0f} s of {budget:.0f} s ({abs(over):.0f} s {sign}, {over / budget:+.1%}"
    note += f"; an epoch {epoch:.1f} s"
    return holds, note + (f"; reached epochs={result['max_epochs']})" if capped else ")")


def report(path: Path, args: argparse.Namespace, ours: dict, baseline: dict, n_train: int, n_test: int) -> None:
    size = f"{args.size} px copies" if args.size else "as it is"
    print(f"\n{path.name} ({size}): {n_train} train, {n_test} test images; imgclf chose {ours['image_size']} px")
    print("\n| run | test accuracy | wall time of training | budget | epochs |")
    print("|---|---|---|---|---|")
    print(
        f"| imgclf `-cn={RECIPE}` | {ours['accuracy']:.3f} | {ours['wall']:.0f} s (train.py) | "
        f"{ours['budget'] / 60:g} min | {ours['epochs']} |"
    )
    planned = "" if baseline["epochs"] == baseline["planned"] else f" (of {baseline['planned']} planned: time ran out)"
    print(
        f"| hand loop (seed 004 CNN, AdamW + OneCycle) | {baseline['accuracy']:.3f} | {baseline['wall']:.0f} s | "
        f"train.py's wall time | {baseline['epochs']}{planned} |"
    )
    holds, note = budget_holds(ours)
    plans = " -> ".join(map(str, ours["plans"])) or "none logged"
    print(
        f"\nimgclf's budget plans (epochs): {plans}; {ours['startup']:.0f} s from launch to train.py's first log line"
    )
    print(f"\nfinishes within its budget: {'holds' if holds else 'NOT met'}: {note}")
    beats = ours["accuracy"] > baseline["accuracy"]
    print(
        f"beats the hand loop: {'holds' if beats else 'NOT met'} ({ours['accuracy']:.3f} vs {baseline['accuracy']:.3f})"
    )
    if path.name == "flowers5" and not args.size and not args.limit:
        met = ours["accuracy"] >= FLOWERS5_TARGET
        print(f"flowers5 >= {FLOWERS5_TARGET}: {'holds' if met else 'NOT met'} ({ours['accuracy']:.3f})")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="scratch_budget."))
    if work.exists() and args.keep:
        shutil.rmtree(work)
    data = work / "data"
    split_copy(args.path.resolve(), data, args.test_share, args.limit, args.seed)
    if args.size:
        downscale(data, args.size)
    n_train = sum(len(p) for p in images_by_class(data / "train").values())
    n_test = sum(len(p) for p in images_by_class(data / "test").values())
    ours = imgclf_scratch(work, data, args)
    baseline = hand(data, ours["image_size"], ours["wall"], args.seed)
    report(args.path, args, ours, baseline, n_train, n_test)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--hand"]:
        hand_loop(*sys.argv[2:6])
    else:
        main()
