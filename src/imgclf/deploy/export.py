"""Export a checkpoint as one self-contained model file, checked against PyTorch before it is kept.

The exported graph takes uint8 (B, 3, S, S) images (any batch size) and returns float32 (B, C)
probabilities: normalization, the calibrated temperature, the softmax and (``tta="flip"``) the mirror-image
average are inside it, exactly as :meth:`imgclf.inference.Predictor.probabilities` computes them. What a
predictor needs besides pixels (classes, sizes, resize, crop, pixel limit) is stored in the file itself
(:mod:`imgclf.deploy.metadata`).

Nothing is written in place (docs/reliability.md I1): the files go to a temporary folder next to ``export/``, and only
once parity with PyTorch holds is that folder renamed to ``export/``. A failed export leaves only
``export.failed.json`` (the parity numbers), never a ``model.onnx``.

``quantize="int8"`` adds ``model.int8.onnx`` beside ``model.onnx`` (:mod:`imgclf.deploy.quantize`): calibrated on
the experiment's training images, gated against the fp32 model on val; a failed gate fails the export as a
failed parity check does.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgclf.atomic import staged_folder, write_text_atomic
from imgclf.data.images import PREDICT_MAX_PIXELS
from imgclf.deploy.metadata import INPUT_NAME, METADATA_KEY, OOD_NAME, OUTPUT_NAME, ModelInfo
from imgclf.deploy.model_card import write_card
from imgclf.deploy.parity import TOLERANCE, check_parity
from imgclf.deploy.quantize import CALIBRATION_IMAGES, INT8_FILE, Int8Gate, export_int8
from imgclf.errors import ImgclfError
from imgclf.experiment.checkpoint import load_checkpoint
from imgclf.inference import Predictor
from imgclf.models.classifier import TTA_MODES
from imgclf.models.ood_tap import OodTap, score_tap
from imgclf.writable import unwritable

log = logging.getLogger(__name__)

FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
FORMATS = tuple(FILES)
EXPORTERS = ("auto", "dynamo", "legacy")  # auto: torch.export-based (dynamo), the TorchScript-based one if it fails
LEGACY_OPSET = 18
EXAMPLE_BATCH = 2  # the traced batch: not 1, which the exporters would take as a fixed size
QUANTIZE = ("none", "int8")


class ExportError(ImgclfError):
    """The model cannot be exported, or the export does not compute what PyTorch computes."""


class Deployable(nn.Module):
    """What the exported file computes: uint8 images -> probabilities, as ``Predictor.probabilities`` does; with
    ``ood`` (energy or knn), also each image's out-of-distribution score (a second output, as ``Predictor.scores``
    gives it; the kNN bank is a constant of the graph)."""

    def __init__(
        self,
        model: nn.Module,
        temperature: float,
        ood: str | None = None,
        bank: torch.Tensor | None = None,
        k: int | None = None,
    ) -> None:
        super().__init__()
        self.model, self.ood, self.ood_temperature, self.ood_k = model, ood, float(temperature), k
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float32))
        self.register_buffer("ood_bank", bank)  # float16 in the file too: the score casts it

    def forward(self, images: torch.Tensor) -> Any:
        if self.ood is None:
            return torch.softmax(self.model(images).float() / self.temperature, dim=1)
        tap: OodTap = score_tap(
            self.model, self.ood, temperature=self.ood_temperature, bank=self.ood_bank, k=self.ood_k
        )
        with tap:  # the exporters trace through its hooks
            probs = torch.softmax(self.model(images).float() / self.temperature, dim=1)
            views = tap.batches[-1]
        return probs, tap.batch_scores(views)


@dataclass
class ExportResult:
    folder: Path
    model: Path
    parity: dict[str, Any]
    card: dict[str, Any]
    int8: Path | None = None  # model.int8.onnx, with quantize="int8"


def export(
    checkpoint: str | Path,
    out: str | Path,
    *,
    fmt: str = "onnx",
    tta: str | None = "none",
    exporter: str = "auto",
    max_pixels: int = PREDICT_MAX_PIXELS,
    parity_samples: int = 500,
    tolerance: float = TOLERANCE,
    experiment: Path | None = None,
    quantize: str = "none",
    calibration_images: int = CALIBRATION_IMAGES,
    int8_gate: Int8Gate | None = None,
    int8_weight_bits: int = 7,
) -> ExportResult:
    """Export ``checkpoint`` to the folder ``out`` (replaced only when the new export passes parity).

    Args:
        checkpoint: an imgclf checkpoint (``best.pt``).
        out: the export folder (``experiments/NAME/export``).
        fmt: one of :data:`FORMATS`.
        tta: test-time augmentation folded into the graph ("none" or "flip"); None: the one the checkpoint's
            config evaluates with (:func:`evaluated_tta`).
        exporter: ONNX exporter, one of :data:`EXPORTERS`.
        max_pixels: the pixel limit stored for the predictor (predict's ``--max-pixels`` overrides it).
        parity_samples: at most this many val images in the parity check (0: all).
        tolerance: the largest difference of a probability allowed between the export and PyTorch.
        experiment: the experiment folder (its splits.csv, test report, doctor.json); None: the checkpoint's.
        quantize: "int8" also writes ``model.int8.onnx`` (ONNX only), calibrated on ``calibration_images`` training
            images and kept only when it passes ``int8_gate`` (default :class:`Int8Gate`) on val.
        int8_weight_bits: 7 (reduce_range: any x86 CPU) or 8 (the full range: CPUs with VNNI or AMX, and ARM).

    Raises:
        CheckpointError: the checkpoint cannot be used; ExportError: export failed or parity does not hold.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    experiment = experiment or checkpoint.parent
    if quantize not in QUANTIZE or (quantize == "int8" and fmt != "onnx"):
        raise ExportError(f"quantize={quantize!r} with format {fmt!r}: INT8 is an ONNX export (quantize none or int8)")
    payload = load_checkpoint(checkpoint)
    tta = evaluated_tta(payload) if tta is None else tta
    predictor = Predictor.load(checkpoint, device="cpu", tta=tta, max_pixels=max_pixels)
    check_exportable(predictor, payload, checkpoint)
    info = model_info(predictor, checkpoint, tta, max_pixels)
    record = predictor.abstain
    scored = record is not None and record.ood_threshold is not None and fmt == "onnx"
    ood = (record.ood or "energy") if scored else None
    k = record.ood_k if record is not None else None
    module = Deployable(predictor.model, predictor.temperature, ood, predictor.ood_bank, k).eval()
    problem = unwritable(out.parent)  # made if missing; the export is staged in it, then renamed
    if problem is not None:
        raise ExportError(
            f"cannot write the export {out}: the folder {out.parent} takes no files ({problem}). "
            "Make it writable, or export elsewhere: imgclf-export --output DIR"
        )
    failed = out.with_name(out.name + ".failed.json")
    # staged beside `out`, which it replaces whole only if the block ends without an error (I1); a staging folder a
    # killed export left is removed, an old export it had set aside put back (imgclf.atomic.staged_folder)
    with staged_folder(out) as staging:
        model_file = staging / FILES[fmt]
        used = write_model(module, info, model_file, fmt, exporter)
        parity = check_parity(predictor, model_file, fmt, experiment / "splits.csv", parity_samples, tolerance)
        parity.update({"exporter": used, "tta": tta})
        if not parity["passed"]:
            write_text_atomic(failed, json.dumps(parity, indent=2) + "\n")
            raise ExportError(
                f"{checkpoint}: the exported model does not compute what PyTorch computes: "
                f"{parity['reason']}; nothing was exported (the numbers are in {failed})"
            )
        if quantize == "int8":
            parity["int8"] = export_int8(
                model_file,
                experiment / "splits.csv",
                calibration_images=calibration_images,
                parity_samples=parity_samples,
                gate=int8_gate or Int8Gate(),
                weight_bits=int8_weight_bits,
            )
            if not parity["int8"]["passed"]:
                write_text_atomic(failed, json.dumps(parity, indent=2) + "\n")
                raise ExportError(
                    f"{checkpoint}: the INT8 model does not answer as the fp32 model does: "
                    f"{parity['int8']['reason']}; nothing was exported (the numbers are in {failed}; "
                    "export without --quantize, or with more --calibration-images)"
                )
        write_text_atomic(staging / "parity.json", json.dumps(parity, indent=2) + "\n")
        card = write_card(staging, model_file, info, payload, checkpoint, experiment, parity, fmt)
        for file in staging.iterdir():  # the exporter's own files too, whatever the umask
            os.chmod(file, 0o644)
    failed.unlink(missing_ok=True)
    log.info("exported %s to %s (%s)", checkpoint, out, used)
    return ExportResult(out, out / FILES[fmt], parity, card, out / INT8_FILE if quantize == "int8" else None)


def check_exportable(predictor: Predictor, payload: dict[str, Any], path: Path) -> None:
    """Refuse what the exported model's predictor would not reproduce: an ``augmentation.eval`` transform
    (the ONNX predictor only decodes and centre-crops, as every shipped recipe evaluates)."""
    spec = (payload.get("config") or {}).get("augmentation", {}).get("eval")
    if spec is not None:
        raise ExportError(
            f"{path}: its evaluation transform augmentation.eval={spec.get('_target_', spec)!r} is "
            "not part of an export (the exported predictor decodes, resizes and centre-crops only); "
            "classify with predict.py --checkpoint instead"
        )


def evaluated_tta(payload: dict[str, Any]) -> str:
    """The test-time augmentation a checkpoint's config evaluates with (``tta``: the recipe's choice, which its
    test report and model card headline used), so an export serves what was measured; "none" when it has none."""
    config = payload.get("config") or {}
    tta = config.get("tta", "none") if isinstance(config, dict) else "none"
    return tta if tta in TTA_MODES else "none"


def model_info(predictor: Predictor, checkpoint: Path, tta: str, max_pixels: int) -> ModelInfo:
    prep = predictor.preprocessing
    return ModelInfo(
        classes=list(predictor.classes),
        image_size=prep.image_size,
        decode_size=prep.decode_size,
        resize=prep.resize,
        mean=[float(m) for m in prep.mean],
        std=[float(s) for s in prep.std],
        temperature=float(predictor.temperature),
        tta=tta,
        max_pixels=int(max_pixels),
        display_names=dict(predictor.display_names),
        source=str(checkpoint),
        abstain=predictor.abstain.to_dict() if predictor.abstain is not None else None,
    )


def write_model(module: Deployable, info: ModelInfo, path: Path, fmt: str, exporter: str) -> str:
    """Write ``module`` as ``fmt`` with ``info`` inside; returns which exporter wrote it."""
    example = torch.zeros((EXAMPLE_BATCH, 3, info.image_size, info.image_size), dtype=torch.uint8)
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice: the format is asked for by name
            traced = torch.jit.trace(module, (example,))
            torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": info.to_json()})
        return "torch.jit.trace"
    if exporter in ("auto", "dynamo"):
        try:
            export_dynamo(module, example, path)
            add_metadata(path, info)
            return "dynamo"
        except Exception as exc:  # the exporter's own failures are many classes (torch._dynamo, onnxscript...)
            if exporter == "dynamo":
                raise ExportError(
                    f"the dynamo ONNX exporter failed ({type(exc).__name__}: "
                    f"{str(exc).strip().splitlines()[0][:300]}); try --exporter legacy"
                ) from exc
            log.warning(
                "the dynamo ONNX exporter failed (%s: %s); using the TorchScript-based one",
                type(exc).__name__,
                str(exc).strip().splitlines()[0][:300],
            )
    export_legacy(module, example, path)
    add_metadata(path, info)
    return "legacy"


def export_dynamo(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch.export-based ONNX export (torch's default), batch dimension dynamic, weights inside the file."""
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=output_names(module),
            dynamic_shapes={"images": {0: batch}},
            external_data=False,
            verbose=False,
            optimize=True,
        )


def export_legacy(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """The TorchScript-based ONNX exporter (``dynamo=False``)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=output_names(module),
            opset_version=LEGACY_OPSET,
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *output_names(module))},
        )


def output_names(module: nn.Module) -> list[str]:
    return [OUTPUT_NAME, OOD_NAME] if getattr(module, "ood", None) else [OUTPUT_NAME]


def add_metadata(path: Path, info: ModelInfo) -> None:
    """Store ``info`` in the file's ``metadata_props`` and check the model; one file, no external data."""
    import onnx

    model = onnx.load(str(path))
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    model.doc_string = f"imgclf export of {info.source}: uint8 images -> class probabilities"
    onnx.checker.check_model(model)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
        f.flush()
        os.fsync(f.fileno())
    for leftover in path.parent.glob(path.name + ".data"):  # never an external-data file beside it
        leftover.unlink()
