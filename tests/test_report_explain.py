"""The test report explains mistakes: the most-confused class pairs and class activation maps (issue 29)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

import imgclf.tasks as tasks
from helpers import compose_cfg, copy_trained, draw, options, read_csv
from imgclf.errors import ConfigError
from imgclf.experiment.run_log import BestFigures
from imgclf.models.classifier import Classifier
from imgclf.reporting import cam, confusion, explain, report
from imgclf.reporting.outputs import Outputs
from imgclf.reporting.statistics import worst_mistakes
from imgclf.tasks.config_check import check_config

FROZEN = [("lite0", "model.freeze=backbone"), ("torchvision", "model.freeze=backbone")]


def build(model: str, *extra: str, size: int = 32) -> Classifier:
    cfg = compose_cfg(
        "train", [f"model={model}", "experiment=x", f"dataset.image_size={size}", "dataset.num_classes=3", *extra]
    )
    torch.manual_seed(0)
    return Classifier(instantiate(cfg.model), [0.5] * 3, [0.25] * 3)


def pictures(size: int, n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [np.asarray(draw(i % 3, rng, size)) for i in range(n)]


@pytest.mark.parametrize(
    "model,extra",
    [pytest.param(m, "", marks=[pytest.mark.slow] if m == "lite_ensemble" else []) for m in options("model")] + FROZEN,
)
def test_every_model_gets_a_class_activation_map_and_is_left_as_it_was(model: str, extra: str) -> None:
    size = 64 if model.startswith("lite") else 32  # Lite's last map is 2x2 at 64 px (1x1 at 32)
    net = build(model, *[e for e in [extra] if e], size=size)
    images = pictures(size)
    with torch.no_grad():
        predicted = net.eval()(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)).argmax(1).tolist()
    net.train()  # as the training loop leaves it: the maps are drawn in eval mode, then it is put back
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    trainable = [p.requires_grad for p in net.parameters()]

    maker = cam.CamMaker(net)
    maps = maker(images, predicted)

    assert maker.layers, f"{model}: no target layer found"
    assert len(maps) == len(images) and all(m.shape == (size, size) for m in maps)
    assert all(0 <= m.min() and m.max() <= 1 for m in maps)
    assert max(float(m.std()) for m in maps) > 0.05, "every heat map is flat"
    shown = cam.overlay(images[0], maps[0])
    assert shown.shape == (size, size, 3) and shown.dtype == np.uint8
    # the model is as it was: weights, train/eval flags, frozen parameters, no gradients left behind
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert [m.training for m in net.modules()] == modes
    assert [p.requires_grad for p in net.parameters()] == trainable
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize(
    "model,layers",
    [
        ("small_cnn", ["net.4"]),  # the last conv-BN-ReLU block, before global pooling
        ("quality_cnn", ["net.7"]),  # the last ReLU before max-pool and flatten
        ("tinyvgg", ["net.1.3"]),  # the last ReLU, before the block's max-pool
        ("resnet_like", ["net.blocks"]),  # the residual stages' output (after the block's own ReLU)
        ("torchvision", ["net.backbone.0.layer4"]),
        ("lite0", ["net.backbone.net._bn1"]),  # the head's BN: its activation module also serves the stem
        pytest.param(  # one per backbone: their maps are averaged
            "lite_ensemble", [f"net.backbone.members.{i}.net._bn1" for i in range(3)], marks=pytest.mark.slow
        ),
    ],
)
def test_the_target_layer_is_the_last_feature_map_before_pooling(model: str, layers: list[str]) -> None:
    found = cam.target_layers(build(model, size=64), 64, 64)  # every one's last map is at least 2x2 at 64 px
    assert [name for name, _ in found] == layers


@pytest.mark.parametrize("model,extra", [("resnet_like", ""), ("lite0", "model.freeze=backbone")])
def test_the_maps_equal_grad_cams_own_and_skip_the_backward_through_the_backbone(model: str, extra: str) -> None:
    """The graph starts at the target layers: the same maps as grad-cam computes with the input's gradient, and no
    module before the target layer is back-propagated through (there, two thirds of a map's time)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    size = 64
    net = build(model, *[e for e in [extra] if e], size=size).eval()
    images = pictures(size)
    maker = cam.CamMaker(net)
    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    backwards: list[int] = []
    handle = first.register_full_backward_hook(lambda *_: backwards.append(1))
    try:
        maps = np.stack(maker(images, [0, 1, 2, 0]))
    finally:
        handle.remove()
    assert not backwards, "the backward reached the first convolution"

    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
    reference = pytorch_grad_cam.GradCAM(model=net, target_layers=[m for _, m in maker.layers])
    expected = reference(input_tensor=batch, targets=[ClassifierOutputTarget(c) for c in [0, 1, 2, 0]])
    reference.activations_and_grads.release()
    np.testing.assert_allclose(maps, expected, atol=1e-5)


def test_a_network_may_declare_its_layers() -> None:
    net = build("resnet_like")
    type(net.net).cam_layers = ("stem",)
    try:
        assert [name for name, _ in cam.target_layers(net, 32, 32)] == ["net.stem"]
    finally:
        del type(net.net).cam_layers


def test_an_unknown_method_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="gradcam\\+\\+.*eigencam"):
        cam.CamMaker(torch.nn.Conv2d(3, 3, 1), "nosuchcam")
    with pytest.raises(ConfigError, match="report.cam_method='nosuchcam'"):
        check_config(compose_cfg("train", ["experiment=x", "report.cam_method=nosuchcam"]))


@pytest.mark.parametrize("method", ["gradcam++", "eigencam"])
def test_another_method_by_name(method: str) -> None:
    net = build("small_cnn")
    images = pictures(32, 2)
    maps = cam.CamMaker(net, method)(images, [0, 1])
    assert len(maps) == 2 and max(float(m.std()) for m in maps) > 0.05
    assert not np.allclose(np.stack(maps), np.stack(cam.CamMaker(net)(images, [0, 1])), atol=1e-3)  # not Grad-CAM


# rows: true class, columns: predicted
CM = [[5, 3, 1], [0, 7, 3], [2, 0, 4]]


def outputs_for(cm: list[list[int]]) -> Outputs:
    """Outputs whose predictions give ``cm``, each image with its own confidence."""
    labels, logits = [], []
    for true, row in enumerate(cm):
        for pred, count in enumerate(row):
            for k in range(count):
                z = torch.zeros(len(cm))
                z[pred] = 1.0 + 0.25 * k  # later images of a cell: more confident
                labels.append(true)
                logits.append(z)
    return Outputs(0.5, torch.stack(logits), torch.tensor(labels))


def test_most_confused_pairs_equal_a_hand_count() -> None:
    pairs = confusion.most_confused(torch.tensor(CM))
    # by hand: the off-diagonal cells, largest first, ties in row order (fastai's most_confused)
    assert [(p.true, p.predicted, p.count) for p in pairs] == [(0, 1, 3), (1, 2, 3), (2, 0, 2), (0, 2, 1)]
    assert [p.share for p in pairs] == pytest.approx([3 / 9, 3 / 10, 2 / 6, 1 / 9])
    assert [(p.true, p.predicted) for p in confusion.most_confused(torch.tensor(CM), top=2, min_count=1)] == [
        (0, 1),
        (1, 2),
    ]
    assert [p.count for p in confusion.most_confused(torch.tensor(CM), min_count=3)] == [3, 3]


def test_report_lists_the_pairs_with_their_most_confident_examples(tmp_path: Path) -> None:
    out = outputs_for(CM)
    classes = ["ant", "bee", "cat"]
    paths = [f"/data/{classes[int(t)]}/{i:02d}.png" for i, t in enumerate(out.labels)]
    maps_asked: list[list[int]] = []

    def maker(images: list[np.ndarray], targets: list[int]) -> list[np.ndarray]:
        maps_asked.append(list(targets))
        return [np.tile(np.linspace(0, 1, img.shape[1], dtype=np.float32), (img.shape[0], 1)) for img in images]

    result = report.SplitResult(
        out, classes, paths, lambda i: np.full((8, 8, 3), 10 * i, np.uint8), {"split": "test", "experiment": "x"}
    )
    result.info.update(checkpoint="c.pt", epoch=1, data_root="/data")
    report.write(tmp_path / "test", result, bootstrap=0, explained=explain.Explain(pairs=3, cams=4, maker=maker))

    rows = read_csv(tmp_path / "test" / "confused_pairs.csv")
    assert [(r["true"], r["predicted"], int(r["count"])) for r in rows] == [
        ("ant", "bee", 3),
        ("bee", "cat", 3),
        ("cat", "ant", 2),
    ]
    assert [float(r["share_of_true"]) for r in rows] == pytest.approx([3 / 9, 3 / 10, 2 / 6])
    # ant -> bee are images 5, 6, 7 (confidence rising with k): the most confident first
    assert [rows[0][f"example{k}"] for k in (1, 2, 3)] == [paths[7], paths[6], paths[5]]
    text = (tmp_path / "test" / "report.md").read_text()
    assert "## Most confused pairs" in text and f"`{paths[7]}`" in text and "confused_pairs.png" in text
    assert "| ant | bee | 3 | 33.3% |" in text
    files = {p.name for p in (tmp_path / "test").iterdir()}
    assert {"confused_pairs.png", "cam_mistakes.png", "cam_correct.png"} <= files
    assert "cam_mistakes.png" in text and "cam_correct.png" in text
    # the 4 most confident mistakes, each mapped for the class it was mistaken for
    worst = worst_mistakes(torch.softmax(out.logits.double(), 1), out.labels, 4)
    assert maps_asked[0] == [int(out.logits[i].argmax()) for i in worst]
    assert all(t != int(out.labels[i]) for t, i in zip(maps_asked[0], worst, strict=True))


def test_best_figures_put_the_maps_of_mistakes_into_tensorboard() -> None:
    net = build("small_cnn")
    images = pictures(32, 6)
    out = Outputs(0.5, torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]))
    out.logits[torch.arange(6), (out.labels + 1) % 3] += 5  # every image a mistake
    figures = BestFigures(["a", "b", "c"], lambda i: images[i], 4, cams=cam.CamMaker(net), cam_count=3)
    drawn = figures.draw(out)
    assert "cam_mistakes" in drawn
    assert "3 most confident mistakes" in drawn["cam_mistakes"]._suptitle.get_text()
    assert "cam_mistakes" not in BestFigures(["a", "b", "c"], lambda i: images[i], 4).draw(out)


def test_test_py_writes_class_activation_maps(trained_tiny, tmp_path: Path) -> None:
    overrides, exp = copy_trained(trained_tiny, tmp_path, "report.cams=8", "report.cams_per_class=1")
    tasks.test(compose_cfg("train", overrides))
    written = {p.name for p in (exp / "test").iterdir()}
    assert {"cam_correct.png", "cam_mistakes.png", "confused_pairs.csv"} <= written
    assert "## Class activation maps" in (exp / "test" / "report.md").read_text()
