"""Class activation maps (the ``grad-cam`` library, ``pytorch_grad_cam``): where in an image the model found the
evidence for a class, drawn over the image as the model saw it.

The target layer is found, not declared: :func:`target_layers` runs two blank images through the network and
keeps the last module whose output is still a spatial (4-D, more than 1x1) feature map before the network
turns it into vectors; pooling layers, and modules the network calls more than once (EfficientNet's one
activation module, used by its stem and its head), are passed over. A network made of several backbones side
by side (``model=lite_ensemble``) gives one layer per backbone and the library averages their maps. A network
class may name its own layers instead, as a class attribute ``cam_layers = ("blocks",)`` (submodule names
relative to the network).

Computing a map changes nothing in the model: its train/eval modes, its parameters' ``requires_grad`` and
their ``.grad`` are put back afterwards, and a frozen backbone gets its gradients from an input that requires
them. ``pytorch_grad_cam`` (with OpenCV) is imported on first use only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from imgclf.errors import ConfigError

log = logging.getLogger(__name__)

# report.cam_method -> the pytorch_grad_cam class. Left out: scorecam and ablationcam (a forward pass per
# channel of the layer: 1280 per image on EfficientNet-Lite), fullgrad (ignores the target layer), and the
# methods that need other targets than one class (finercam, shapleycam).
CAM_METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "gradcamelementwise": "GradCAMElementWise",
    "kpcacam": "KPCA_CAM",
}
BATCH = 16  # images per forward and backward pass
POOLING = (
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)


def check_method(name: str) -> str:
    """``name`` if ``pytorch_grad_cam`` offers it here.

    Raises:
        ConfigError: an unknown name; the message lists the known ones.
    """
    if name not in CAM_METHODS:
        raise ConfigError(f"report.cam_method={name!r}: expected one of {', '.join(CAM_METHODS)}")
    return name


def plain(model: nn.Module) -> nn.Module:
    """The module itself under ``torch.compile`` or DistributedDataParallel (whose forward on one rank alone
    would wait for the others)."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def target_layers(model: nn.Module, height: int, width: int) -> list[tuple[str, nn.Module]]:
    """The layers whose feature maps the CAM weighs, with their names in ``model``: declared by the network
    (``cam_layers``), else the last spatial map before each point where the network turns maps into vectors.

    Raises:
        ConfigError: a declared name that is not a submodule.
    """
    names = {module: name for name, module in model.named_modules()}
    for module in model.modules():
        declared = getattr(type(module), "cam_layers", None)
        if declared:
            found = dict(module.named_modules())
            missing = [n for n in declared if n not in found]
            if missing:
                raise ConfigError(f"{type(module).__name__}.cam_layers names {missing}, which it does not have")
            return [(names[found[n]], found[n]) for n in declared]
    return _probe(model, height, width, names)


def _probe(model: nn.Module, height: int, width: int, names: dict[nn.Module, str]) -> list[tuple[str, nn.Module]]:
    calls: dict[nn.Module, int] = {}
    order: list[tuple[nn.Module, torch.Tensor]] = []

    def hook(module: nn.Module, _: Any, output: Any) -> None:
        calls[module] = calls.get(module, 0) + 1
        if isinstance(output, torch.Tensor):
            order.append((module, output))

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    device = next(model.parameters()).device
    try:
        with _unchanged(model), torch.no_grad():
            model.eval()
            model(torch.zeros(2, 3, height, width, device=device))
    finally:
        for handle in handles:
            handle.remove()
    pooled = {id(out) for module, out in order if isinstance(module, POOLING)}
    chosen, pending = [], None
    for module, out in order:
        if out.ndim == 4 and out.shape[-1] * out.shape[-2] > 1:
            if id(out) not in pooled and calls[module] == 1:
                pending = module
        elif out.ndim == 3:
            pending = None  # tokens (a transformer): its maps need a reshape this finder does not guess
        elif out.ndim == 2 and pending is not None:
            chosen.append(pending)  # maps became vectors: the end of one backbone
            pending = None
    return [(names[m], m) for m in chosen]


@contextlib.contextmanager
def _unchanged(model: nn.Module) -> Iterator[None]:
    """Whatever the block does to the modules' train/eval flags, the parameters' ``requires_grad`` and their
    gradients is undone when it ends."""
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training  # not .train(): a frozen backbone's train() would override its parts
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad


class CamMaker:
    """Class activation maps of a classifier: ``maker(images, classes)`` -> one (H, W) map in 0..1 per image.

    Args:
        model: the classifier (a :class:`~imgclf.models.classifier.Classifier`: uint8 or 0..1 images in, its
            own normalization), on its device.
        method: a name in :data:`CAM_METHODS`.

    Raises:
        ConfigError: an unknown method.
    """

    def __init__(self, model: nn.Module, method: str = "gradcam") -> None:
        self.model = plain(model)
        self.method = check_method(method)
        self.layers: list[tuple[str, nn.Module]] | None = None

    def __call__(self, images: Sequence[np.ndarray], classes: Sequence[int]) -> list[np.ndarray]:
        """Maps of ``images`` ((H, W, 3) uint8, all one size) for ``classes`` (one per image); [] when the
        network has no spatial feature map to weigh (it is logged once)."""
        if not images:
            return []
        if self.layers is None:
            height, width = images[0].shape[:2]
            self.layers = target_layers(self.model, height, width)
            if self.layers:
                log.info("class activation maps (%s) of %s", self.method, ", ".join(n for n, _ in self.layers))
            else:
                log.warning("no class activation maps: %s has no spatial feature map", type(self.model).__name__)
        if not self.layers:
            return []
        maps: list[np.ndarray] = []
        try:
            for start in range(0, len(images), BATCH):
                maps += self._batch(images[start : start + BATCH], classes[start : start + BATCH])
        except (RuntimeError, ValueError, IndexError) as exc:  # the report matters more than its maps
            log.warning("no class activation maps (%s of %s): %s", self.method, type(self.model).__name__, exc)
            self.layers = []
            return []
        return maps

    def _batch(self, images: Sequence[np.ndarray], classes: Sequence[int]) -> list[np.ndarray]:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        device = next(self.model.parameters()).device
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(device, torch.float32) / 255
        cam_class = getattr(pytorch_grad_cam, CAM_METHODS[self.method])
        with _unchanged(self.model), torch.inference_mode(False), torch.enable_grad():
            for p in self.model.parameters():
                p.requires_grad_(False)  # no .grad on the weights: the graph starts at the target layers
            layers = [m for _, m in self.layers or []]
            # registered before grad-cam's own hooks, so they see the outputs these return
            handles = [layer.register_forward_hook(_graph_starts_here) for layer in layers]
            cam = cam_class(model=self.model, target_layers=layers)
            try:
                found = cam(input_tensor=batch, targets=[ClassifierOutputTarget(int(c)) for c in classes])
            finally:
                cam.activations_and_grads.release()
                for handle in handles:
                    handle.remove()
        return [np.asarray(m, dtype=np.float32) for m in found]


def _graph_starts_here(_module: nn.Module, _inputs: Any, output: Any) -> Any:
    """A target layer's output as the start of the autograd graph: a map needs the gradient of the class score
    with respect to this output only, so nothing before it records a graph or is back-propagated through (the
    backward through the backbones to the input was two thirds of a map's time; the maps are the same)."""
    if isinstance(output, torch.Tensor) and not output.requires_grad:
        return output.detach().requires_grad_(True).clone()  # a clone: later in-place ops may change it
    return None


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """``image`` ((H, W, 3) uint8) under the heat map ``heat`` ((H, W) in 0..1, red: most evidence)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(image.astype(np.float32) / 255, heat, use_rgb=True, image_weight=0.55)


def cam_figure(
    maker: Callable[[Sequence[np.ndarray], Sequence[int]], list[np.ndarray]],
    indices: Sequence[int],
    probs: torch.Tensor,
    labels: torch.Tensor,
    names: Sequence[str],
    picture: Callable[[int], np.ndarray],
    title: str,
    empty: str = "no mistakes",
) -> Any | None:
    """A grid of the images ``indices`` with the map of their predicted class over them, captioned with the
    true and predicted class and the confidence (``empty`` without images); None when the network has no map."""
    from imgclf.reporting import figures

    if not len(indices):
        return figures.image_grid([], [], title, empty=empty)
    confidence, preds = probs.max(1)
    images = [picture(int(i)) for i in indices]
    maps = maker(images, [int(preds[i]) for i in indices])
    if not maps:
        return None
    captions = [
        f"true {names[int(labels[i])]}\npred {names[int(preds[i])]} ({float(confidence[i]):.0%})" for i in indices
    ]
    return figures.image_grid([overlay(img, m) for img, m in zip(images, maps, strict=True)], captions, title)


def correct_per_class(probs: torch.Tensor, labels: torch.Tensor, per_class: int, max_classes: int) -> list[int]:
    """Up to ``per_class`` correctly classified images of each class, the most confident first, for the
    ``max_classes`` classes of lowest recall (the ones worth a look when there are too many to show)."""
    confidence, preds = probs.max(1)
    right = preds == labels
    classes = sorted(
        (int(c) for c in labels.unique()),
        key=lambda c: (float(right[labels == c].double().mean()), c),
    )[:max_classes]
    chosen: list[int] = []
    for c in sorted(classes):
        mine = torch.nonzero(right & (labels == c)).flatten()
        best = mine[confidence[mine].argsort(descending=True)][:per_class]
        chosen += [int(i) for i in best]
    return chosen
