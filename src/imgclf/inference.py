"""A trained model, loaded from its checkpoint alone, classifying image files.

Nothing a checkpoint names is imported or executed on its say-so: the model class must be one of
imgclf's own (:data:`MODELS`), evaluation transforms one of :data:`EVAL_TRANSFORMS`, and the
file loads with ``weights_only=True``. The class list, input size, normalization and the
temperature fitted by ``calibrate=true`` all come from the checkpoint, and images are decoded
and resized by the very code that made the training cache, so predictions match ``test.py``'s.

This module imports neither Hydra nor OmegaConf: ``predict.py`` starts in about the time it
takes to import torch and torchvision.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imgclf.abstain import Abstain
from imgclf.data.images import PREDICT_MAX_PIXELS, check_decoded_pixels, decode_bytes, serve
from imgclf.data.preprocessing import Preprocessing
from imgclf.errors import CheckpointError, ConfigError
from imgclf.experiment.checkpoint import load_checkpoint
from imgclf.models.classifier import Classifier, with_tta
from imgclf.models.ood_tap import BANK_KEY, inner_classifier, score_tap
from imgclf.runtime import resolve_device

# `_target_` of a checkpoint's model -> the class predict may build
MODELS = {
    f"imgclf.models.{module}.{name}": (f"imgclf.models.{module}", name)
    for module, name in (
        ("tinyvgg", "TinyVGG"),
        ("small_cnn", "SmallCNN"),
        ("cifar_cnn", "CifarCNN"),
        ("quality_cnn", "QualityCNN"),
        ("resnet_like", "ResNetLike"),
        ("resnet_like", "ResNetLikeV2"),
        ("small_resnet", "SmallResNet"),
        ("lite0", "EfficientNetLite0"),
        ("efficientnet_lite", "EfficientNetLite"),
        ("torchvision_net", "TorchvisionNet"),
        ("timm_net", "TimmNet"),  # builds only architectures timm registers (timm_net checks the name)
    )
}
# the trained weights are in the checkpoint: never load or download pretrained ones
NO_PRETRAINED = {"pretrained": False, "weights": None}
# deterministic torchvision transforms an `augmentation.eval` may use
EVAL_TRANSFORMS = frozenset(
    f"torchvision.transforms.v2.{name}"
    for name in ("Compose", "Resize", "CenterCrop", "Pad", "Grayscale", "RGB", "Identity")
)
PLAIN = (str, int, float, bool, type(None))


@dataclass
class Predictor:
    """A model ready to classify images, with what its checkpoint says about them."""

    model: torch.nn.Module  # the Classifier, or it wrapped for test-time augmentation
    classes: list[str]
    display_names: dict[str, str]  # class name -> a readable name (may be empty)
    transform: Callable[[Any], Any] | None  # the evaluation transform, ending with the centre crop
    preprocessing: Preprocessing
    temperature: float
    device: torch.device
    checkpoint: Path
    max_pixels: int = PREDICT_MAX_PIXELS  # images that would decode to more pixels are refused (images.py says why)
    abstain: Abstain | None = None  # the "not sure" thresholds chosen on val (imgclf.abstain), if any
    ood_bank: torch.Tensor | None = None  # abstain.ood=knn: the training features the kNN score compares with

    @classmethod
    def load(
        cls, path: str | Path, device: str = "auto", tta: str = "none", max_pixels: int = PREDICT_MAX_PIXELS
    ) -> Predictor:
        """Build the model a checkpoint was trained as and load its weights; ``tta="flip"`` averages
        the probabilities of every image and its mirror image; ``max_pixels``: see :meth:`load_image`.

        Raises:
            CheckpointError: the file is unreadable, not an imgclf checkpoint, names a model or
                transform predict does not build, or its weights do not fit; the message says which.
            ConfigError: ``device`` is not available.
        """
        path = Path(path)
        payload = load_checkpoint(path)
        try:
            config = payload["config"]
            classes = [str(c) for c in payload["class_names"]]
            prep = Preprocessing.from_checkpoint(payload)
            net = build_model(config["model"], path)
            model = Classifier(net, payload["mean"], payload["std"])
            transform = prep.view(build_transform(config.get("augmentation", {}).get("eval"), path))
        except (KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(
                f"{path} lacks what predict needs ({type(exc).__name__}: {exc}); "
                "it was not written by imgclf's train.py"
            ) from exc
        try:
            model.load_state_dict(payload["model"])
        except RuntimeError as exc:
            raise CheckpointError(
                f"{path}: the weights do not fit {type(net).__name__} ({str(exc).splitlines()[0]})"
            ) from exc
        torch_device = resolve_device(device)
        model.to(torch_device).eval()
        names = payload.get("display_names") or {}
        return cls(
            model=with_tta(model, tta),
            classes=classes,
            display_names={str(k): str(v) for k, v in names.items()},
            transform=transform,
            preprocessing=prep,
            temperature=float(payload.get("temperature", 1.0)),
            device=torch_device,
            checkpoint=path,
            max_pixels=max_pixels,
            abstain=Abstain.from_dict(payload.get("abstain")),
            ood_bank=knn_bank(payload, path),
        )

    @property
    def image_size(self) -> int:
        """The network's input side."""
        return self.preprocessing.image_size

    def load_image(self, path: str | Path, data: bytes | None = None) -> torch.Tensor:
        """One file (or its bytes ``data``, e.g. an upload; ``path`` then only names it) as the (3, H, W)
        uint8 tensor the model takes, decoded as the training cache decodes.

        An image that would decode to more than ``max_pixels`` is refused from its header, before any
        pixel is decoded (Pillow's decompression-bomb warning is an error too).

        Raises:
            DataError: the file is over the pixel limit or cannot be decoded; the message names it.
            OSError: the file cannot be read.
        """
        prep = self.preprocessing
        data = Path(path).read_bytes() if data is None else data  # read once: the header checked is the one decoded
        draft = 2 * prep.decode_size  # as decode_bytes: JPEGs are decoded at reduced scale
        check_decoded_pixels(path, self.max_pixels, data=data, draft=draft, setting="predict.py --max-pixels")
        return serve(decode_bytes(data, str(path), prep.decode_size, prep.resize)[0], self.transform)

    @torch.inference_mode()
    def probabilities(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Class probabilities (B, num_classes) on the CPU, with the checkpoint's temperature."""
        batch = torch.stack(list(images)).to(self.device, non_blocking=True)
        logits = self.model(batch).float()
        return torch.softmax(logits / self.temperature, dim=1).cpu()

    def scores(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`probabilities` and the out-of-distribution score of each image (the record's ``ood``: the energy
        score by default, :mod:`imgclf.models.ood_tap`), one pass."""
        record = self.abstain
        ood, k = (record.ood, record.ood_k) if record is not None else (None, None)
        with score_tap(self.model, ood, temperature=self.temperature, bank=self.ood_bank, k=k) as tap:
            probs = self.probabilities(images)
        return probs, tap.scores()

    def frozen_engine(self, engine: str = "auto", folder: Path | None = None) -> AbstractContextManager[None]:
        """A block whose backbone passes run on ``engine`` (:mod:`imgclf.training.onnx_twin`: ``auto`` is onnxruntime
        on a CPU when it is installed, its first images checked against PyTorch, else PyTorch); the exported backbone
        is kept in ``folder`` (keyed by its weights) for later runs. Networks without a ``backbone`` run as they are."""
        from imgclf.training.onnx_twin import faster_backbone

        return faster_backbone(inner_classifier(self.model).net, engine, self.device, folder)


def knn_bank(payload: Mapping[str, Any], path: Path) -> torch.Tensor | None:
    """The checkpoint's kNN bank (abstain.ood=knn), checked: a kNN threshold without its bank would judge images
    on nothing."""
    record = payload.get("abstain") or {}
    bank = payload.get(BANK_KEY)
    if not (isinstance(record, Mapping) and record.get("ood") == "knn" and record.get("ood_threshold") is not None):
        return None
    if not isinstance(bank, torch.Tensor) or bank.dim() != 2 or len(bank) == 0:
        raise CheckpointError(
            f'{path} has a kNN "not sure" threshold (abstain.ood=knn) but no bank of training features '
            f"({BANK_KEY!r} is {type(bank).__name__}): fit it again with python test.py calibrate=true abstain.ood=knn"
        )
    return bank


def build_model(spec: Mapping[str, Any], path: Path) -> torch.nn.Module:
    """The network of a checkpoint's ``config.model``, from :data:`MODELS` only, without pretrained weights."""
    target = spec.get("_target_")
    if target not in MODELS:
        raise CheckpointError(
            f"{path}: model {target!r} is not one of imgclf's models ({', '.join(sorted(MODELS))}); "
            "predict builds only these"
        )
    module, name = MODELS[target]
    kwargs = {**_arguments(spec, path), **{k: v for k, v in NO_PRETRAINED.items() if k in spec}}
    try:
        return getattr(importlib.import_module(module), name)(**kwargs)
    except (TypeError, ValueError, ConfigError) as exc:  # ConfigError: e.g. a timm name timm does not register
        raise CheckpointError(f"{path}: cannot build {name} from the checkpoint's settings {kwargs}: {exc}") from exc


def build_transform(spec: Any, path: Path) -> Callable[[Any], Any] | None:
    """The checkpoint's ``augmentation.eval``: None, or deterministic transforms from :data:`EVAL_TRANSFORMS`."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping) or spec.get("_target_") not in EVAL_TRANSFORMS:
        target = spec.get("_target_") if isinstance(spec, Mapping) else spec
        raise CheckpointError(
            f"{path}: evaluation transform {target!r} is not one predict applies ({', '.join(sorted(EVAL_TRANSFORMS))})"
        )
    module, name = spec["_target_"].rsplit(".", 1)
    kwargs = _arguments(spec, path, nested=True)
    if name == "Compose":
        kwargs["transforms"] = [build_transform(t, path) for t in spec.get("transforms") or []]
    try:
        return getattr(importlib.import_module(module), name)(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build {name}{kwargs}: {exc}") from exc


def _arguments(spec: Mapping[str, Any], path: Path, nested: bool = False) -> dict[str, Any]:
    """The plain values of a ``_target_`` node (Hydra's ``_convert_`` and other ``_`` keys dropped)."""
    kwargs = {}
    for key, value in spec.items():
        if str(key).startswith("_") or (nested and key == "transforms"):
            continue
        if not _plain(value):
            raise CheckpointError(f"{path}: setting {key}={value!r} of {spec.get('_target_')} is not a plain value")
        kwargs[str(key)] = value
    return kwargs


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, PLAIN)
