"""Every model option gives (B, classes) logits and gradients; every optimizer x scheduler steps."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate

from helpers import compose_cfg, options
from imgclf.models.classifier import Classifier
from imgclf.training.scheduler import Scheduler


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("num_classes", [2, 7])
def test_every_model_gives_logits_and_gradients(model: str, num_classes: int) -> None:
    cfg = compose_cfg(
        "train", [f"model={model}", "experiment=x", "dataset.image_size=32", f"dataset.num_classes={num_classes}"]
    )
    net = Classifier(instantiate(cfg.model), cfg.dataset.mean, cfg.dataset.std)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    logits = net(images)
    assert logits.shape == (3, num_classes)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1])).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_tinyvgg_width_list_makes_one_block_per_entry() -> None:
    from imgclf.models.tinyvgg import TinyVGG

    two = TinyVGG(5, 32, width=8)  # the dishes project's model: two blocks of one width
    assert [m.out_channels for m in two.modules() if isinstance(m, torch.nn.Conv2d)] == [8] * 4
    three = TinyVGG(5, 32, width=[8, 16, 32], batch_norm=True)
    assert [m.out_channels for m in three.modules() if isinstance(m, torch.nn.Conv2d)] == [8, 8, 16, 16, 32, 32]
    assert three[-1].in_features == 32 * 4 * 4 and three(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize(
    "width,message",
    [([], "positive integer"), ([8, 0], "positive integer"), ([8] * 6, "6 blocks.*image_size=32 allows at most 5")],
)
def test_B2_tinyvgg_rejects_impossible_widths(width: list[int], message: str) -> None:
    from imgclf.errors import ConfigError
    from imgclf.models.tinyvgg import TinyVGG

    with pytest.raises(ConfigError, match=message):
        TinyVGG(5, 32, width=width)


def test_classifier_normalizes_uint8_and_float_inputs_alike() -> None:
    net = Classifier(torch.nn.Flatten(), mean=[0.5, 0.25, 0.0], std=[0.5, 0.25, 1.0])
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    out_uint8, out_float = net(images), net(images.float() / 255)
    torch.testing.assert_close(out_uint8, out_float)
    expected = (images.float() / 255 - torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)) / torch.tensor(
        [0.5, 0.25, 1.0]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(out_uint8, expected.flatten(1))


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_every_optimizer_and_scheduler_pair_steps(optimizer: str, scheduler: str) -> None:
    cfg = compose_cfg(
        "train",
        [f"optimizer={optimizer}", f"scheduler={scheduler}", "experiment=x", "epochs=4", "dataset.num_classes=3"],
    )
    model = torch.nn.Linear(4, 3)
    before = model.weight.detach().clone()
    opt = instantiate(cfg.optimizer)(model.parameters())
    scheduler: Scheduler = instantiate(cfg.scheduler)(opt)
    lrs = []
    for _ in range(4):
        loss = model(torch.randn(8, 4)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        scheduler.after_step()
        lrs.append(scheduler.lr())
        scheduler.after_epoch(monitored=0.5)  # a flat metric: plateau schedulers decay
    assert not torch.equal(before, model.weight)
    assert lrs[0] == cfg.optimizer.lr
    if scheduler == "none":
        assert lrs == [cfg.optimizer.lr] * 4
    elif scheduler in ("cosine", "reduce_on_plateau"):
        assert scheduler.lr() < lrs[0]  # after the last epoch's step


@pytest.mark.parametrize("interval,expected_lr", [("step", 0.125), ("epoch", 0.5)])
def test_per_step_interval_steps_every_batch_and_epoch_interval_once(interval: str, expected_lr: float) -> None:
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    scheduler = Scheduler(opt, lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5), interval=interval)
    for _ in range(3):  # three batches, then the end of the epoch
        opt.step()
        scheduler.after_step()
    scheduler.after_epoch(0.0)
    assert scheduler.lr() == pytest.approx(expected_lr)


def test_plateau_scheduler_follows_the_monitored_metric_and_mode() -> None:
    cfg = compose_cfg(
        "train",
        ["experiment=x", "scheduler=reduce_on_plateau", "scheduler.factory.patience=0", "dataset.num_classes=3"],
    )
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    scheduler = instantiate(cfg.scheduler)(opt)
    for acc in (0.5, 0.6, 0.7):  # improving accuracy (mode=max): no decay
        scheduler.after_epoch(acc)
    assert scheduler.lr() == 1.0
    scheduler.after_epoch(0.6)  # worse
    assert scheduler.lr() == pytest.approx(cfg.scheduler.factory.factor)


PROBE = """
import resource, sys, torch
from imgclf.runtime import tune_malloc
applied = tune_malloc() if sys.argv[1] == "1" else False
x = torch.randn(8, 32, 128, 128)
conv = torch.nn.Conv2d(32, 32, 3, padding=1)
with torch.no_grad():
    conv(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        conv(x)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(applied, faults)
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
@pytest.mark.slow
def test_malloc_tuning_stops_page_faults_on_repeated_large_tensors() -> None:
    import subprocess
    import sys

    runs = {}
    for tuned in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", PROBE, tuned], capture_output=True, text=True, check=True).stdout
        applied, faults = out.split()
        runs[tuned] = (applied == "True", int(faults))
    assert runs["1"][0], "tune_malloc() applied on glibc"
    # each 16 MiB output is faulted in afresh without tuning, and reused with it
    assert runs["1"][1] * 10 < runs["0"][1], runs


@pytest.mark.parametrize("augmentation", options("augmentation"))
def test_every_augmentation_gives_uint8_images_of_the_working_size(augmentation: str) -> None:
    import numpy as np

    from imgclf.data.dataset import DecodedImages

    cfg = compose_cfg("train", [f"augmentation={augmentation}", "experiment=x", "dataset.image_size=24"])
    images = np.random.default_rng(0).integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    for split in ("train", "eval"):
        node = cfg.augmentation[split]
        dataset = DecodedImages(images, [0, 1, 2], instantiate(node) if node is not None else None)
        for i in range(3):
            image, label = dataset[i]
            assert image.dtype == torch.uint8 and image.shape == (3, 24, 24) and int(label) == i


def test_warmup_ramps_the_learning_rate_then_follows_the_scheduler() -> None:
    def run(warmup: int) -> list[float]:
        opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
        scheduler = Scheduler(
            opt, lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5), warmup_steps=warmup
        )
        lrs = []
        for _epoch in range(3):
            for _ in range(2):
                lrs.append(scheduler.lr())
                opt.step()
                scheduler.after_step()
            scheduler.after_epoch(0.0)
        return lrs

    assert run(0) == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25])
    assert run(4) == pytest.approx([0.25, 0.5, 0.75 * 0.5, 0.5, 0.25, 0.25])  # warmup scales the scheduled lr


def test_D5_warmup_state_survives_a_checkpoint() -> None:
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    scheduler = Scheduler(opt, None, warmup_steps=10)
    for _ in range(3):
        scheduler.after_step()
    state = scheduler.state_dict()
    opt2 = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    again = Scheduler(opt2, None, warmup_steps=10)
    again.load_state_dict(state)
    assert again.lr() == scheduler.lr() == pytest.approx(0.4)


@pytest.mark.parametrize("preset", [None, "ACTIVE"])
def test_openmp_threads_sleep_while_they_wait_unless_the_user_says_otherwise(preset: str | None) -> None:
    """imgclf sets OMP_WAIT_POLICY=PASSIVE before torch (and so OpenMP) starts; a policy the user set is kept."""
    code = (
        "import sys, os, imgclf; assert 'torch' not in sys.modules; import torch; print(os.environ['OMP_WAIT_POLICY'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (preset or "PASSIVE")
