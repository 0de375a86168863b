"""imgclf-split: class-stratified, seeded train/val/test manifests for an image folder.

imgclf-split /path/to/photos --out data/my_splits [--val 0.15] [--test 0.15] [--seed 0] [--format csv|json]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from imgclf.cli.common import add_version
from imgclf.cli.paths import user_path
from imgclf.data.folder import FolderSource
from imgclf.data.manifest import write_manifests
from imgclf.errors import ImgclfError


def main(argv: list[str] | None = None) -> int:
    """imgclf-split: write class-stratified, seeded train/val/test manifests for a folder."""
    parser = argparse.ArgumentParser(prog="imgclf-split", description=main.__doc__)
    parser.add_argument("root", type=user_path, help="an image folder (any layout imgclf reads)")
    parser.add_argument("--out", type=user_path, required=True, help="folder for train/val/test manifests")
    parser.add_argument("--val", type=float, default=0.15, help="share of each class for val (default 0.15)")
    parser.add_argument("--test", type=float, default=0.15, help="share of each class for test (default 0.15)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("csv", "json"), default="csv")
    add_version(parser)
    args = parser.parse_args(argv)
    root = args.root.expanduser().resolve()
    try:
        splits = FolderSource(str(root), val_fraction=args.val, test_fraction=args.test, split_seed=args.seed).scan()
    except ImgclfError as exc:
        print(f"imgclf-split: {exc}", file=sys.stderr)
        return 1
    for path in write_manifests(splits, args.out.expanduser(), root, args.format):
        counts = Counter(splits.classes[label] for _, label in splits.samples[path.stem])
        print(f"{path}: {sum(counts.values())} images, " + ", ".join(f"{c} {n}" for c, n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
