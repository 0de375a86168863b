"""Every config option composes; bad values fail before any data is read, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from helpers import CONF, compose_cfg, options, tiny_overrides
from imgclf.errors import ConfigError
from imgclf.tasks.config_check import check_config

GROUPS = ("dataset", "augmentation", "model", "optimizer", "scheduler", "loss", "batch_mix")
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_passes_the_checks(group: str, option: str) -> None:
    cfg = compose_cfg("train", [f"{group}={option}", "experiment=x"])
    if OmegaConf.missing_keys(cfg) == {"dataset.root"}:  # image_folder: the user names the folder
        cfg.dataset.root = "/data/photos"
    check_config(cfg)
    assert OmegaConf.select(cfg, group) is not None
    # every option names its class (augmentation options name them per train/eval transform)
    nodes = [n for n in (cfg[group].values() if group == "augmentation" else [cfg[group]]) if n is not None]
    assert option == "none" or (nodes and all("_target_" in n for n in nodes)), f"{group}={option} names no class"


@pytest.mark.parametrize("name", PRIMARY)
def test_every_primary_config_composes(name: str) -> None:
    cfg = compose_cfg(name, ["experiment=x"])
    if OmegaConf.is_missing(cfg.dataset, "root"):  # the recipes for any folder (transfer, scratch) ask for it
        with pytest.raises(ConfigError, match="no value for dataset.root: set it on the command line"):
            check_config(cfg)
        cfg = compose_cfg(name, ["experiment=x", "dataset.root=/photos"])
    check_config(cfg)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_required_groups_and_top_level_keys_exist() -> None:
    assert {"adamw", "radam", "sgd", "adam"} <= set(options("optimizer"))
    assert {"reduce_on_plateau", "cosine", "step", "none"} <= set(options("scheduler"))
    cfg = compose_cfg("train", ["experiment=x"])
    for key in ("experiment", "seed", "epochs", "device", "resume", "monitor", "mode", "ckpt", "split"):
        assert key in cfg
    assert cfg.monitor == "val/acc" and cfg.mode == "max" and cfg.resume == "auto"


@pytest.mark.parametrize(
    "override,key",
    [
        ("epochs=-1", "epochs"),
        ("epochs=abc", "epochs"),
        ("optimizer.lr=abc", "optimizer.lr"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("loader.batch_size=0", "loader.batch_size"),
        ("device=tpu", "device"),
        ("monitor=val/loss", "val/loss with mode=max"),
        ("mode=sideways", "mode"),
        ("dataset.val_fraction=1.5", "dataset.val_fraction"),
        ("dataset.std=[0.5,0.5,0]", "dataset.std"),
        ("dataset.mean=[0.5]", "dataset.mean"),
        ("resume=/no/such/file.pt", "resume"),
        ("split=holdout", "split"),
        ("deterministic=maybe", "deterministic"),
        ("dataset=image_folder dataset.root=x dataset.native_scale=3", "dataset.native_scale"),
        ("dataset=image_folder dataset.root=x dataset.native_scale=true", "dataset.native_scale"),
    ],
)
def test_B2_bad_values_are_rejected_naming_the_key(override: str, key: str) -> None:
    cfg = compose_cfg("train", ["experiment=x", *override.split()])
    with pytest.raises(ConfigError, match=key.replace("/", ".")):
        check_config(cfg)


def test_B1_unknown_key_fails_at_composition() -> None:
    with pytest.raises(ConfigCompositionException, match="epochz"):
        compose_cfg("train", ["epochz=3"])


def test_B1_unknown_option_fails_at_composition() -> None:
    with pytest.raises(ConfigCompositionException, match="adamx"):
        compose_cfg("train", ["optimizer=adamx"])


def test_B3_bad_target_is_found_before_data_is_read(tmp_path: Path) -> None:
    import imgclf.tasks as tasks

    missing = tmp_path / "never_read"
    missing.mkdir()
    (missing / "a").mkdir()  # a class folder, so only the model can fail
    cfg = compose_cfg("train", tiny_overrides(tmp_path, missing, "model._target_=torch.nn.NoSuchNet"))
    with pytest.raises(ConfigError, match="NoSuchNet"):
        tasks.train(cfg)
    assert not (tmp_path / "experiments").exists()  # nothing written, nothing decoded


@pytest.mark.parametrize(
    "override,group",
    [
        ("+optimizer.momentum=0.9", "optimizer"),  # AdamW takes no momentum
        ("scheduler._target_=torch.optim.lr_scheduler.NoSuchLR", "scheduler"),
        ("+scheduler.gamma_typo=0.5", "scheduler"),
    ],
)
def test_B3_a_bad_optimizer_or_scheduler_is_found_before_any_image_is_decoded(
    tmp_path: Path, override: str, group: str
) -> None:
    import imgclf.tasks as tasks
    from helpers import make_folder

    folder = make_folder(tmp_path / "photos", {"train": 4})
    (folder / "train" / "circle" / "junk.jpg").write_text("not an image")  # decoding it would stop the run first
    cfg = compose_cfg("train", tiny_overrides(tmp_path, folder, override))
    with pytest.raises(ConfigError, match=rf"could not build `{group}`"):
        tasks.train(cfg)
    assert not (tmp_path / "experiments").exists()  # nothing written
    assert not list(tmp_path.rglob("images-*")) and not list(tmp_path.rglob("report.json"))  # nothing decoded (the
    # image sizes, read from the headers to choose the model's input size, may be remembered already)


def test_B2_wrong_num_classes_override_is_explained(tmp_path: Path, tiny_folder: Path) -> None:
    import imgclf.tasks as tasks
    from imgclf.errors import DataError

    cfg = compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "dataset.num_classes=5"))
    with pytest.raises(DataError, match=r"num_classes=5.*3 classes"):
        tasks.train(cfg)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA GPU")
def test_B2_cuda_requested_without_a_gpu_is_a_clear_error() -> None:
    from imgclf.runtime import resolve_device

    with pytest.raises(ConfigError, match="device=cuda but torch sees no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "mps")


@pytest.mark.parametrize(
    "override,hint",
    [
        ("+epochz=3", "did you mean epochs"),  # Hydra's own suggestion after `epochz=3` is refused
        ("+loader.workers=2", "did you mean loader.num_workers"),
        ("+trainer.early_stopping.patiense=3", "did you mean trainer.early_stopping.patience"),
        ("+report.topk=3", "did you mean report.top_k"),
    ],
)
def test_B1_a_key_added_with_plus_that_imgclf_never_reads_is_refused(override: str, hint: str) -> None:
    with pytest.raises(ConfigError, match=rf"{override[1:].split('=')[0]}: imgclf has no such key \({hint}"):
        check_config(compose_cfg("train", ["experiment=x", override]))


@pytest.mark.slow
def test_B1_train_py_refuses_plus_typo_before_writing_anything(tmp_path: Path, tiny_folder: Path) -> None:
    from helpers import run_cli

    result = run_cli("train.py", *tiny_overrides(tmp_path, tiny_folder, "+epochz=3"))
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "epochz: imgclf has no such key (did you mean epochs?)" in output
    assert "Traceback" not in output
    assert not (tmp_path / "experiments" / "tiny" / "best.pt").exists()


@pytest.mark.parametrize("option", ["mixup", "cutmix"])
def test_a_whole_number_alpha_mixes_a_batch(tmp_path: Path, option: str) -> None:
    """batch_mix.alpha=50 (an int from the command line) mixes like 50.0: torch's Dirichlet sampler has no integer
    version, and torchvision keeps the type it is given."""
    import torch

    from imgclf.tasks import build

    cfg = compose_cfg("train", [f"batch_mix={option}", "batch_mix.alpha=50", "dataset.num_classes=3"])
    images, labels = build.batch_mix(cfg)(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
    assert labels.shape == (4, 3) and torch.allclose(labels.sum(1), torch.ones(4))


def test_a_batch_mix_alpha_not_above_0_is_named() -> None:
    from imgclf.tasks import build

    with pytest.raises(ConfigError, match=r"batch_mix\.alpha=-1: MixUp and CutMix need a number above 0"):
        build.batch_mix(compose_cfg("train", ["batch_mix=mixup", "batch_mix.alpha=-1", "dataset.num_classes=3"]))
    with pytest.raises(ConfigError, match=r"batch_mix\.transforms\.1\.alpha=0\.0: "):
        build.batch_mix(
            compose_cfg(
                "train", ["batch_mix=mixup_cutmix", "batch_mix.transforms.1.alpha=0.0", "dataset.num_classes=3"]
            )
        )
