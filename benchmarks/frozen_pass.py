"""Frozen-backbone passes (what `transfer` spends its time on): imgclf's feature extraction on onnxruntime
(trainer.frozen_engine=auto) against onnxruntime alone on the same backbone and input, and against the eager
PyTorch path imgclf used before (channels-last, as the recipe sets it), in the same run on the same threads.

Real photos (a shared folder, decoded once to squares before any timing, so only the passes are timed) go through
the pretrained EfficientNet-Lite backbones `transfer` uses, at its input size. imgclf's onnxruntime pass is timed
cold (the export and the parity check included, as in a first run) and warm (the exported file found, as in test.py
and later runs). Target (issue 30): imgclf's warm pass >= 0.8x onnxruntime alone.

    python benchmarks/frozen_pass.py [--folder ../shared/data/food101_mini/train] [--images 96] [--size 384]
                                     [--variant lite0 lite1 lite2] [--batch 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.8


def photos(folder: Path, count: int, size: int) -> torch.Tensor:
    """(count, 3, size, size) uint8: the folder's first photos (sorted), shorter side resized, centre kept."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
    if len(files) < count:
        raise SystemExit(f"{folder} has {len(files)} photos, fewer than --images {count}")
    squares = []
    for path in files:
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = size / min(image.size)
            image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))))
            left, top = (image.width - size) // 2, (image.height - size) // 2
            squares.append(np.asarray(image.crop((left, top, left + size, top + size))))
    return torch.from_numpy(np.stack(squares)).permute(0, 3, 1, 2).contiguous()


def batches(images: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (images[i : i + size], torch.zeros(len(images[i : i + size]), dtype=torch.long))
        for i in range(0, len(images), size)
    ]


def timed(run) -> tuple[float, object]:  # noqa: ANN001
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=ROOT.parent / "shared" / "data" / "food101_mini" / "train")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--variant", nargs="+", default=["lite0", "lite1", "lite2"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.folder.is_dir():
        raise SystemExit(f"no folder {args.folder}: pass --folder with a folder of photos")
    import onnxruntime

    from imgclf.models.classifier import Classifier
    from imgclf.models.efficientnet_lite import EfficientNetLite
    from imgclf.training.features import extract
    from imgclf.training.onnx_twin import INPUT, OUTPUT, export_bytes, faster_backbone

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    net = EfficientNetLite(num_classes=2, variant=args.variant, pretrained=True, freeze="backbone")
    model = Classifier(net, net.input_mean, net.input_std).eval()
    images = photos(args.folder, args.images, args.size)
    loader = batches(images, args.batch)
    n = len(images)
    print(f"{n} photos of {args.folder} at {args.size} px, {'+'.join(args.variant)}, batch {args.batch}, "
          f"{args.threads} threads; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}", flush=True)  # fmt: skip

    rows = []
    eager_s, eager = timed(
        lambda: extract(model.to(memory_format=torch.channels_last), loader, cpu, channels_last=True)
    )
    rows.append(("imgclf before: eager PyTorch, channels-last", eager_s))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with faster_backbone(model.net, "onnxruntime", cpu, folder):
            cold_s, cold = timed(lambda: extract(model, loader, cpu))
            twin = model.net.backbone
        rows.append(("imgclf onnxruntime, first run (export + parity)", cold_s))
        with faster_backbone(model.net, "onnxruntime", cpu, folder):
            warm_s, warm = timed(lambda: extract(model, loader, cpu))
        rows.append(("imgclf onnxruntime, exported file found", warm_s))
        if twin.failed:
            raise SystemExit(f"imgclf fell back to PyTorch: {twin.failed}")
        # onnxruntime alone: the same backbone graph, inputs normalized beforehand (not timed), nothing else
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        with torch.no_grad():
            session = onnxruntime.InferenceSession(
                export_bytes(model.net.backbone, model.normalize(images[:2])),
                options,
                providers=["CPUExecutionProvider"],
            )
            normalized = [model.normalize(x).numpy() for x, _ in loader]
        alone_s, _ = timed(lambda: [session.run([OUTPUT], {INPUT: x}) for x in normalized])
        rows.append(("onnxruntime alone", alone_s))
    diff = float((warm.tensors[0] - eager.tensors[0]).abs().max())
    print("\n| pass | s | images/s | vs eager |\n|---|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s:.1f} | {n / s:.1f} | {eager_s / s:.2f}x |")
    ratio = alone_s / warm_s
    print(f"\nimgclf (exported file found) / onnxruntime alone: {ratio:.2f} (target >= {TARGET}: "
          f"{'met' if ratio >= TARGET else 'NOT met'}); max |feature difference| vs eager {diff:.2g}")  # fmt: skip
    sys.exit(0 if ratio >= TARGET else 1)


if __name__ == "__main__":
    main()
