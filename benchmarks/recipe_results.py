"""Train and test the offline recipes on ../shared/data and write their results tables into docs/.

For every recipe: `python train.py -cn=<recipe>` then `python test.py -cn=<recipe>`, exactly as a
user runs them (each a fresh process, 2 CPU cores here), then the test accuracy, macro F1 with
their 95% bootstrap intervals and the training time are read back from the experiment's files.
Recipes on tiny data (plates: 8 test photos) run once per split seed, each seed carving a
different stratified val/test split, and report mean and standard deviation over the seeds.

The shipped recipes' table replaces what lies between the `recipe-results` markers in docs/recipes.md, and
the rows `transfer@<folder>` / `scratch@<folder>` (the recipes for any folder, trained with
`dataset.root=../shared/data/<folder>`) the `own-data-results` block of docs/own-data.md, so the numbers are
never typed by hand; a block is rewritten only when the results hold its rows. Finished experiments are reused (train.py says so and exits);
`--fresh` trains them again.

    python benchmarks/recipe_results.py [--recipes flowers5_lite0 ...] [--seeds 5] [--fresh] [--no-readme]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
# docs blocks: the shipped recipes' table, and the table of the recipes for any folder ("<recipe>@<folder>" rows),
# each with the page that holds it
BLOCKS = {"recipe-results": lambda name: "@" not in name, "own-data-results": lambda name: "@" in name}
BLOCK_PAGES = {"recipe-results": ROOT / "docs" / "recipes.md", "own-data-results": ROOT / "docs" / "own-data.md"}

# row -> (shared data folder, target test accuracy or None, repeated over split seeds). A row is a recipe, or
# "<recipe>@<folder>" for the recipes made for any folder (transfer, scratch): trained with dataset.root=<folder>.
RECIPES = {
    "quickstart": (None, 0.95, False),
    "flowers5_lite0": ("flowers5", 0.90, False),
    "food101_mini_lite0": ("food101_mini", 0.85, False),
    "food101_mini_lite_ensemble": ("food101_mini", 0.85, False),
    "flowers5_tinyvgg": ("flowers5", 0.80, False),
    "food101_mini_resnet_like": ("food101_mini", None, False),
    "plates_tinyvgg": ("plates", None, True),
    "plates_lite0": ("plates", None, True),
    "transfer@food101_mini": ("food101_mini", 0.82, False),
    "transfer@plates": ("plates", 0.80, True),
    "transfer@flowers5": ("flowers5", 0.81, False),
    "scratch@flowers5": ("flowers5", 0.78, False),
}


def recipe_and_overrides(name: str) -> tuple[str, list[str], str]:
    """The recipe of a row, the overrides that point it at its folder, and its experiment name."""
    recipe, _, folder = name.partition("@")
    if not folder:
        return recipe, [], recipe
    return recipe, [f"dataset.root={SHARED / folder}"], f"{recipe}_{folder}"


def run(script: str, *args: str) -> None:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / script), *args, "progress=false"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{script} {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def one_run(recipe: str, experiment: str, overrides: list[str], fresh: bool) -> dict[str, float]:
    """Train and test one experiment; its test metrics and training time."""
    common = [f"-cn={recipe}", f"experiment={experiment}", *overrides]
    trains = fresh or not (ROOT / "experiments" / experiment / "best.pt").exists()  # else train.py reports it done
    start = time.perf_counter()
    run("train.py", *common, *(["overwrite=true"] if fresh else []))
    wall = time.perf_counter() - start  # the whole command: start-up, decoding, feature caching, epochs
    run("test.py", *common)
    exp = ROOT / "experiments" / experiment
    metrics = json.loads((exp / "test" / "metrics.json").read_text())
    epochs = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {
        "accuracy": metrics["accuracy"],
        "accuracy_ci": metrics.get("accuracy_ci"),
        "f1": metrics["f1"],
        "samples": metrics["samples"],
        "seconds": sum(e["epoch_seconds"] for e in epochs),
        "epochs": len(epochs),
        "wall_seconds": wall if trains else None,
    }


def measure(recipe: str, seeds: int, fresh: bool) -> dict[str, object]:
    data, target, repeated = RECIPES[recipe]
    recipe, folder, experiment = recipe_and_overrides(recipe)
    if not repeated:
        result = one_run(recipe, experiment, folder, fresh)
        return {**result, "runs": 1, "target": target, "data": data}
    runs = [
        one_run(recipe, f"{experiment}_seed{s}", [*folder, f"dataset.split_seed={s}", f"seed={s}"], fresh)
        for s in range(seeds)
    ]
    accuracies = [r["accuracy"] for r in runs]
    walls = [r["wall_seconds"] for r in runs]
    return {
        "accuracy": statistics.mean(accuracies),
        "accuracy_sd": statistics.stdev(accuracies),
        "f1": statistics.mean(r["f1"] for r in runs),
        "samples": runs[0]["samples"],
        "seconds": statistics.mean(r["seconds"] for r in runs),
        "epochs": runs[0]["epochs"],
        "wall_seconds": None if None in walls else statistics.mean(walls),
        "runs": len(runs),
        "target": target,
        "data": data,
    }


def row(recipe: str, r: dict[str, object]) -> str:
    if r["runs"] == 1:
        low, high = r["accuracy_ci"] or (float("nan"), float("nan"))
        accuracy = f"{r['accuracy']:.3f} ({low:.3f}-{high:.3f})"
    else:
        accuracy = f"{r['accuracy']:.3f} ± {r['accuracy_sd']:.3f} over {r['runs']} split seeds"
    target = (
        ""
        if r["target"] is None
        else (f"{r['target']:.2f}: " + ("met" if r["accuracy"] >= r["target"] else "**not met**"))
    )
    wall = r.get("wall_seconds")
    took = f"{r['epochs']} epochs, {duration(r['seconds'])}" + (f" ({duration(wall)} in all)" if wall else "")
    recipe = recipe.split("@")[0]
    return (
        f"| `{recipe}` | {r['data'] or 'digits (offline)'} | {r['samples']} | {accuracy} | {r['f1']:.3f} | "
        f"{took} | {target} |"
    )


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def table(results: dict[str, dict[str, object]]) -> str:
    header = (
        "| recipe | data | test images | test accuracy (95% CI) | macro F1 | training | target |\n"
        "|---|---|---:|---|---:|---|---|"
    )
    machine = f"{os.cpu_count()} CPU cores, {platform.machine()}, torch {_torch_version()}"
    note = (
        f"Written by `python benchmarks/recipe_results.py` on {time.strftime('%Y-%m-%d')} ({machine}); "
        "training: the sum of the epochs' wall time, then in brackets the whole `train.py` command "
        "(start-up, decoding and caching the images or backbone features, epochs)."
    )
    return "\n".join([header, *(row(name, r) for name, r in results.items()), "", note])


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def update_page(block: str, text: str, page: Path) -> None:
    """Replace the block's table with ``text``, keeping the rows of recipes this run did not measure (a recipe
    re-run alone leaves the others' rows as they were, and the note says from which earlier run they are)."""
    begin, end = f"<!-- {block}:begin -->", f"<!-- {block}:end -->"
    content = page.read_text()
    if begin not in content or end not in content:
        raise SystemExit(f"{page} has no {begin} ... {end} block to replace")
    head, rest = content.split(begin, 1)
    old, tail = rest.split(end, 1)
    page.write_text(f"{head}{begin}\n{merged(old, text)}\n{end}{tail}")


def merged(old: str, new: str) -> str:
    """``new``'s table with the rows of ``old`` whose recipe and data (the first two cells) it lacks, in old's
    order with new's rows in their places; kept rows are named in the note with old's date."""

    def rows(text: str) -> dict[str, str]:
        return {"|".join(line.split("|")[1:3]): line for line in text.splitlines() if line.startswith("| `")}

    fresh, earlier = rows(new), rows(old)
    kept = [key for key in earlier if key not in fresh]
    if not kept:
        return new
    order = list(earlier) + [key for key in fresh if key not in earlier]
    lines = new.splitlines()
    header, note = lines[:2], [line for line in lines[2:] if not line.startswith("| `")]
    date = re.search(r" on (\d{4}-\d{2}-\d{2})", old)
    names = ", ".join(" on ".join(cell.strip() for cell in key.split("|")) for key in kept)
    note[-1] += f" Rows kept from the run of {date.group(1) if date else 'an earlier day'}: {names}."
    return "\n".join([*header, *((fresh.get(key) or earlier[key]) for key in order), *note])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", type=int, default=5, help="split seeds of the repeated (tiny-data) recipes")
    parser.add_argument("--fresh", action="store_true", help="train again even if the experiment finished")
    parser.add_argument("--no-readme", "--no-docs", action="store_true", help="print the tables only")
    parser.add_argument(
        "--results",
        type=Path,
        default=ROOT / "experiments" / "recipe_results.json",
        help="results of earlier runs, merged with this one's so one recipe can be re-run alone",
    )
    args = parser.parse_args()
    missing = {RECIPES[r][0] for r in args.recipes} - {None} - {p.name for p in SHARED.glob("*")}
    if missing:
        raise SystemExit(f"{SHARED} lacks {sorted(missing)}: these recipes need ../shared/data")
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    for recipe in args.recipes:
        start = time.perf_counter()
        results[recipe] = measure(recipe, args.seeds, args.fresh)
        print(
            f"{recipe}: test accuracy {results[recipe]['accuracy']:.3f} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=2))
    for block, belongs in BLOCKS.items():
        ordered = {name: results[name] for name in RECIPES if name in results and belongs(name)}
        if not ordered:  # a block is rewritten only from results that hold its rows
            continue
        text = table(ordered)
        print(text)
        if not args.no_readme:
            update_page(block, text, BLOCK_PAGES[block])


if __name__ == "__main__":
    main()
