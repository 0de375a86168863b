"""Frozen forward passes on onnxruntime: the same backbone, several times faster than eager PyTorch on a CPU.

A frozen backbone only ever runs forward, in eval mode, without gradients: the feature cache, test.py,
calibration and the audit spend nearly all their time there. :func:`faster_backbone` swaps the network's
``backbone`` for an :class:`OnnxTwin` for the duration of such passes. The twin exports the backbone to ONNX on its
first batch (or finds the file it exported before: ``<folder>/<key>.onnx``, keyed by the weights, the input shape
and the exporter's version), runs its first images through both engines and keeps onnxruntime only when they agree
(:data:`TOLERANCE`); any failure (an operator the exporter lacks, a disagreement) is logged with the numbers and the
pass goes on in PyTorch, so the engine never changes a result beyond the tolerance.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgclf.atomic import write_atomic

log = logging.getLogger(__name__)

ENGINES = ("auto", "onnxruntime", "torch")  # auto: onnxruntime when it is installed and the device is a CPU
TOLERANCE = 1e-4  # the largest |difference| of a feature allowed, relative to the largest |feature| (at least 1)
PARITY_IMAGES = 4  # images of the first batch run through both engines
OPSET = 18
INPUT, OUTPUT = "images", "features"


def onnxruntime_installed() -> bool:
    return find_spec("onnxruntime") is not None


def chosen_engine(engine: str, device: torch.device) -> str:
    """The engine frozen passes run on: ``onnxruntime`` or ``torch`` (onnxruntime runs on the CPU only)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "auto":
        return "onnxruntime" if device.type == "cpu" and onnxruntime_installed() else "torch"
    return engine


def onnx_key(module: nn.Module, shape: tuple[int, ...]) -> str:
    """What the exported file depends on: the module's classes, its weights and buffers, the input's shape (without
    the batch) and the exporter (torch's version)."""
    digest = hashlib.sha256(f"{torch.__version__}|{OPSET}|{tuple(shape)}".encode())
    for name, sub in module.named_modules():
        digest.update(f"{name}:{type(sub).__qualname__};".encode())
    for name, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()[:32]


def export_bytes(module: nn.Module, example: torch.Tensor) -> bytes:
    """``module`` as an ONNX graph taking any batch size: the TorchScript-based exporter (seconds), the
    torch.export-based one when it fails."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notices
        try:
            torch.onnx.export(
                module,
                (example,),
                buffer,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        except Exception:  # noqa: BLE001 - an operator the TorchScript exporter lacks: the other exporter
            buffer = io.BytesIO()
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            program = torch.onnx.export(
                module,
                (example,),
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes=({0: batch},),
                opset_version=OPSET,
                dynamo=True,
            )
            program.save(buffer)
    return buffer.getvalue()


class OnnxTwin(nn.Module):
    """``module`` (a frozen backbone) run by onnxruntime for eval-mode passes without gradients, PyTorch otherwise.

    Args:
        module: the backbone; it stays registered, so ``.to()``/``.eval()`` reach it.
        folder: where exported files are kept for later runs (None: exported again by every process).
        threads: onnxruntime's intra-op threads (PyTorch's by default).
    """

    def __init__(self, module: nn.Module, folder: Path | None = None, threads: int | None = None) -> None:
        super().__init__()
        self.module = module
        self.folder = folder
        self.threads = threads or torch.get_num_threads()
        self.session: Any = None
        self.failed: str | None = None  # why the passes run on PyTorch
        self.parity: float | None = None  # the largest relative difference measured on the first images

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.failed or self.module.training or (torch.is_grad_enabled() and x.requires_grad):
            return self.module(x)
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.module.parameters()):
            return self.module(x)
        if self.session is None:
            self._start(x)
            if self.failed:
                return self.module(x)
        array = x.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run([OUTPUT], {INPUT: array})[0]).to(x.device)

    def _start(self, x: torch.Tensor) -> None:
        """Export (or reuse the exported file), open the session, compare the first images with PyTorch's."""
        example = x[:PARITY_IMAGES].detach().float().cpu().contiguous()
        try:
            self.session = self._session(example)
        except Exception as exc:  # noqa: BLE001 - any exporter or onnxruntime failure: PyTorch computes instead
            self.failed = f"the export to onnxruntime failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        else:
            with torch.no_grad():
                reference = self.module(example.to(x.device)).float().cpu()
            output = torch.from_numpy(self.session.run([OUTPUT], {INPUT: example.numpy()})[0])
            scale = max(1.0, float(reference.abs().max()))
            self.parity = float((output - reference).abs().max()) / scale if output.shape == reference.shape else 1.0
            if not self.parity <= TOLERANCE:
                self.failed = (
                    f"onnxruntime's features differ from PyTorch's by {self.parity:.3g} (relative) on "
                    f"{len(example)} image(s), more than {TOLERANCE:g}"
                )
        if self.failed:
            self.session = None
            log.warning("frozen passes run on PyTorch: %s", self.failed)
        else:
            log.info(
                "frozen passes run on onnxruntime (%d threads; parity %.2g on %d images)",
                self.threads,
                self.parity,
                len(example),
            )

    def _session(self, example: torch.Tensor) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: onnxruntime's own warnings are not the user's to act on
        # idle threads sleep instead of spinning, as imgclf asks of OpenMP (imgclf/__init__.py): Lite0 on 8 images
        # took 123 ms instead of 176-188 ms on 2 cores with other work running
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")

        def session(model: bytes | str) -> Any:
            return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])

        path = None if self.folder is None else self.folder / f"{onnx_key(self.module, tuple(example.shape[1:]))}.onnx"
        if path is not None and path.is_file():
            try:
                return session(str(path))
            except Exception:  # noqa: BLE001 - a damaged file: exported again below
                log.info("the exported backbone %s could not be opened: exporting it again", path)
        was_training = self.module.training
        self.module.eval()
        try:
            model = export_bytes(self.module, example)
        finally:
            self.module.train(was_training)
        if path is not None:
            try:
                write_atomic(path, lambda f: f.write(model))
            except OSError as exc:  # a full or read-only cache: this process still uses the export
                log.info("the exported backbone was not kept in %s (%s)", self.folder, exc)
        return session(model)


@contextmanager
def faster_backbone(net: nn.Module, engine: str, device: torch.device, folder: Path | None) -> Iterator[None]:
    """Inside the block, ``net.backbone``'s eval passes without gradients run on ``engine`` (one of
    :data:`ENGINES`; for networks with a ``backbone``); the PyTorch module is back in place afterwards, so
    checkpoints, class activation maps and training never see the twin."""
    backbone = getattr(net, "backbone", None)
    if not isinstance(backbone, nn.Module) or chosen_engine(engine, device) != "onnxruntime":
        yield
        return
    net.backbone = OnnxTwin(backbone, folder)
    try:
        yield
    finally:
        net.backbone = backbone
