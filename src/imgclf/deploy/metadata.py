"""What an exported model says about itself, stored inside the file (ONNX ``metadata_props``, TorchScript
extra files) as one JSON string, so that the model file alone is enough to classify images.

This module imports no torch: the ONNX predictor reads it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from imgclf.data.images import MAX_PIXELS, PREDICT_MAX_PIXELS, RESIZE_MODES

TOLERANCE = 1e-4  # the parity rule: every probability within this of PyTorch's (deploy/parity.py)

METADATA_KEY = "imgclf"  # the metadata_props key (and TorchScript extra file "imgclf.json")
FORMAT_VERSION = 1
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
OOD_NAME = "ood_score"  # a second output, (B,) OOD scores, when the model has an OOD threshold (imgclf.abstain)
OOD_NAMES = (OOD_NAME, "energy")  # "energy": what exports made before the kNN score named it


@dataclass(frozen=True)
class ModelInfo:
    """How images reach an exported model and what its outputs mean.

    The graph takes uint8 (B, 3, image_size, image_size) images and returns float32 (B, C)
    probabilities: normalization (``mean``/``std``), the calibrated ``temperature``, the softmax and,
    with ``tta="flip"``, the mirror-image average are inside it; the numbers here are for the record.
    A file is decoded to a ``decode_size`` square (``resize``) and centre-cropped to ``image_size``.
    """

    classes: list[str]
    image_size: int
    decode_size: int
    resize: str
    mean: list[float]
    std: list[float]
    temperature: float = 1.0
    tta: str = "none"
    max_pixels: int = PREDICT_MAX_PIXELS
    display_names: dict[str, str] = field(default_factory=dict)
    source: str = ""  # the checkpoint it was exported from
    abstain: dict[str, Any] | None = None  # the "not sure" thresholds chosen on val (imgclf.abstain.Abstain)
    format: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInfo:
        """Parse and check the stored record.

        Raises:
            ValueError: the text is not a record this version of imgclf reads; the message says what is wrong.
        """
        record = json.loads(text)
        if not isinstance(record, Mapping):
            raise ValueError("the record is not a JSON object")
        if record.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {record.get('format')!r}, this imgclf reads format {FORMAT_VERSION}")
        known = {k: record[k] for k in cls.__dataclass_fields__ if k in record}
        info = cls(**known)
        info.check()
        return info

    def check(self) -> None:
        """Raises ValueError naming the first value that cannot be right."""
        problems = [
            (not self.classes or not all(isinstance(c, str) for c in self.classes), f"classes {self.classes!r}"),
            (
                not 1 <= int(self.image_size) <= int(self.decode_size),
                f"image_size {self.image_size} / decode_size {self.decode_size}",
            ),
            (self.resize not in RESIZE_MODES, f"resize {self.resize!r}"),
            (not 1 <= int(self.max_pixels) <= MAX_PIXELS, f"max_pixels {self.max_pixels}"),
            (not isinstance(self.display_names, Mapping), f"display_names {self.display_names!r}"),
        ]
        for bad, what in problems:
            if bad:
                raise ValueError(f"unusable value: {what}")


def parse(metadata: Mapping[str, Any], where: str) -> ModelInfo:
    """The :class:`ModelInfo` in a model file's metadata map.

    Raises:
        ValueError: absent or unreadable; the message names ``where`` and what to do.
    """
    text = metadata.get(METADATA_KEY)
    if text is None:
        raise ValueError(
            f"{where} holds no imgclf metadata (key {METADATA_KEY!r}): it was not written by "
            "imgclf-export; export the experiment with `imgclf-export --experiment NAME`"
        )
    try:
        return ModelInfo.from_json(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{where}: its imgclf metadata cannot be used ({exc}); export it again with this version of imgclf-export"
        ) from exc
