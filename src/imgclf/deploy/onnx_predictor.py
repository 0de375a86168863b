"""An exported model classifying image files on onnxruntime, with numpy and Pillow only: no torch.

The mirror of :class:`imgclf.inference.Predictor` (same ``load`` / ``load_image`` / ``probabilities``,
same attributes) for a ``model.onnx`` written by ``imgclf-export``. Everything it needs (classes, display
names, input size, resize mode, centre crop, pixel limit) is in the file's own metadata, and images are
decoded by the very functions that made the training cache (``imgclf.data.images``), so its probabilities
equal the checkpoint's within the export's parity tolerance.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.abstain import Abstain
from imgclf.data.images import MAX_PIXELS, center_crop, check_decoded_pixels, decode_bytes
from imgclf.deploy.metadata import INPUT_NAME, OOD_NAMES, OUTPUT_NAME, ModelInfo, parse
from imgclf.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


@dataclass
class OnnxPredictor:
    """An exported model ready to classify images, with what its file says about them."""

    session: Any  # onnxruntime.InferenceSession
    info: ModelInfo
    classes: list[str]
    display_names: dict[str, str]  # class name -> a readable name (may be empty)
    image_size: int
    checkpoint: Path  # the .onnx file (named so for predict's and the web app's outputs)
    max_pixels: int
    tta: str  # test-time augmentation folded into the graph at export
    abstain: Abstain | None = None  # the "not sure" thresholds chosen on val, from the file's metadata

    @classmethod
    def load(cls, path: str | Path, max_pixels: int | None = None, device: str = "cpu") -> OnnxPredictor:
        """Open an ``imgclf-export`` ONNX file.

        Args:
            path: the ``model.onnx`` file.
            max_pixels: refuse images that would decode to more pixels; None: the limit stored in the file
                (``imgclf-export --max-pixels``, by default predict's).
            device: ``cpu``, ``auto`` (CUDA when onnxruntime has it) or ``cuda[:N]``.

        Raises:
            CheckpointError: the file is missing, not ONNX, or not an imgclf export; the message says which.
            ConfigError: ``device`` is not available to onnxruntime, or ``max_pixels`` is out of range.
        """
        try:
            import onnxruntime as ort  # here: importing this module stays cheap for the torch CLI's --help
        except ModuleNotFoundError:
            raise ConfigError(
                f"{path} is an ONNX model and onnxruntime is not installed: pip install onnxruntime (or imgclf's "
                "deploy extra, pip install -e '.[deploy]')"
            ) from None

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such model file; export one with `imgclf-export --experiment NAME`")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # onnxruntime's own warnings are not the user's business
        # idle threads sleep instead of spinning: 1.4x faster with other processes on the cores (see onnx_twin)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(path), options, providers=providers(device, ort))
        except Exception as exc:  # onnxruntime raises its own pybind classes (InvalidProtobuf, Fail, ...)
            raise CheckpointError(
                f"{path}: onnxruntime cannot load it ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[-1][:300]}); is it a complete model.onnx "
                "written by imgclf-export?"
            ) from exc
        try:
            info = parse(session.get_modelmeta().custom_metadata_map, str(path))
        except ValueError as exc:
            raise CheckpointError(str(exc)) from exc
        check_signature(session, info, path)
        limit = info.max_pixels if max_pixels is None else int(max_pixels)
        if not 1 <= limit <= MAX_PIXELS:
            raise ConfigError(f"max_pixels {limit}: must be between 1 and {MAX_PIXELS}")
        return cls(
            session=session,
            info=info,
            classes=list(info.classes),
            display_names=dict(info.display_names),
            image_size=info.image_size,
            checkpoint=path,
            max_pixels=limit,
            tta=info.tta,
            abstain=Abstain.from_dict(info.abstain),
        )

    def load_image(self, path: str | Path, data: bytes | None = None) -> np.ndarray:
        """One file (or its bytes ``data``, e.g. an upload; ``path`` then only names it) as the (3, H, W)
        uint8 array the model takes, decoded as the training cache decodes and centre-cropped as evaluation
        crops. An image that would decode to more than ``max_pixels`` is refused from its header first.

        Raises:
            DataError: the file is over the pixel limit or cannot be decoded; the message names it.
            OSError: the file cannot be read.
        """
        info = self.info
        data = Path(path).read_bytes() if data is None else data  # read once: the header checked is the one decoded
        check_decoded_pixels(
            path, self.max_pixels, data=data, draft=2 * info.decode_size, setting="predict.py --max-pixels"
        )
        square = decode_bytes(data, str(path), info.decode_size, info.resize)[0]
        return np.ascontiguousarray(center_crop(square, info.image_size).transpose(2, 0, 1))

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities (B, num_classes), float32, with the calibrated temperature (inside the graph)."""
        if len(images) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        batch = np.ascontiguousarray(np.stack([np.asarray(image, dtype=np.uint8) for image in images]))
        return np.asarray(self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0], dtype=np.float32)

    def scores(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`probabilities` and the OOD scores (the metadata's ``abstain.ood``), (B,); None when the graph has
        no score output (exported without an OOD threshold)."""
        named = [o.name for o in self.session.get_outputs()[1:] if o.name in OOD_NAMES]
        if not named or len(images) == 0:
            return self.probabilities(images), None
        batch = np.ascontiguousarray(np.stack([np.asarray(image, dtype=np.uint8) for image in images]))
        probs, ood = self.session.run([OUTPUT_NAME, named[0]], {INPUT_NAME: batch})
        return np.asarray(probs, dtype=np.float32), np.asarray(ood, dtype=np.float64)


def providers(device: str, ort: Any) -> list[str]:
    """onnxruntime execution providers for predict's ``--device`` value."""
    available = ort.get_available_providers()
    if device in ("cpu", "auto"):
        return (["CUDAExecutionProvider"] if device == "auto" and "CUDAExecutionProvider" in available else []) + [
            "CPUExecutionProvider"
        ]
    if device == "cuda" or device.startswith("cuda:"):
        if "CUDAExecutionProvider" not in available:
            raise ConfigError(
                f"--device {device}: this onnxruntime has no CUDA provider (it has "
                f"{', '.join(available)}); install onnxruntime-gpu or use --device cpu"
            )
        index = int(device.partition(":")[2] or 0)
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]  # type: ignore[list-item]
    raise ConfigError(f"--device {device}: an ONNX model runs on cpu, auto or cuda[:N]")


def check_signature(session: Any, info: ModelInfo, path: Path) -> None:
    """The graph takes uint8 (B, 3, S, S) ``images`` and returns (B, C) ``probabilities``, as its metadata says."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    want = (
        f"input {INPUT_NAME} uint8 (B, 3, {info.image_size}, {info.image_size}), output {OUTPUT_NAME} (B, "
        f"{len(info.classes)})"
    )
    ok = (
        len(inputs) == 1
        and inputs[0].name == INPUT_NAME
        and inputs[0].type == "tensor(uint8)"
        and list(inputs[0].shape[1:]) == [3, info.image_size, info.image_size]
        and len(outputs) in (1, 2)
        and outputs[0].name == OUTPUT_NAME
        and all(o.name in OOD_NAMES for o in outputs[1:])
        and outputs[0].shape[-1] == len(info.classes)
    )
    if not ok:
        got = (
            f"inputs {[(i.name, i.type, i.shape) for i in inputs]}, "
            f"outputs {[(o.name, o.type, o.shape) for o in outputs]}"
        )
        raise CheckpointError(
            f"{path}: the graph does not match its imgclf metadata (expected {want}; it has "
            f"{got}); export it again with imgclf-export"
        )
