"""Batch augmentation: each operation matches torchvision's per-image kernel, parameters are drawn
per image from torchvision's distributions, and the threaded loader is reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from helpers import CONF
from imgclf.data import batch_augment as B
from imgclf.data import kernels
from imgclf.data.dataset import BatchLoader, DecodedImages, EpochBatchSampler, LazyImages, make_loader

N = 24


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Smooth colour images with edges and grey areas (like photos: hue, ties and flat regions)."""
    g = torch.Generator().manual_seed(0)
    small = torch.randint(0, 256, (N, 3, 6, 6), generator=g, dtype=torch.uint8)
    images = F.resize(small, [40, 40], antialias=True)
    images[:, :, :8, :8] = 128  # a grey patch: no hue, saturation 0
    return images.contiguous()


def differing(a: torch.Tensor, b: torch.Tensor) -> tuple[int, float]:
    """(largest difference, fraction of values that differ)."""
    d = (a.int() - b.int()).abs()
    return int(d.max()), float((d > 0).float().mean())


@pytest.mark.parametrize(
    "code,fn,low,high",
    [
        (kernels.BRIGHTNESS, F.adjust_brightness, 0.3, 1.8),
        (kernels.CONTRAST, F.adjust_contrast, 0.3, 1.8),
        (kernels.SATURATION, F.adjust_saturation, 0.0, 2.0),
        (kernels.HUE, F.adjust_hue, -0.5, 0.5),
    ],
)
@pytest.mark.slow
def test_colour_kernels_equal_torchvision_per_image(
    photos: torch.Tensor, code: int, fn, low: float, high: float
) -> None:
    factors = np.linspace(low, high, N).astype(np.float32)
    out = B._color(photos.clone(), np.full((N, 1), code), factors[:, None])
    expected = torch.stack([fn(photos[i], float(factors[i])) for i in range(N)])
    largest, fraction = differing(out, expected)
    assert largest <= 1 and fraction < 0.01
    assert not torch.equal(out[0], out[-1] if code != kernels.HUE else photos[-1])  # factors differ per image


def test_sharpness_kernel_equals_torchvision(photos: torch.Tensor) -> None:
    factors = np.linspace(0.0, 2.0, N).astype(np.float32)
    out = B._sharpen(photos.clone(), factors)
    expected = torch.stack([F.adjust_sharpness(photos[i], float(factors[i])) for i in range(N)])
    largest, fraction = differing(out, expected)
    assert largest <= 1 and fraction < 0.01


def test_rotation_warp_equals_torchvision_rotate(photos: torch.Tensor) -> None:
    angles = np.linspace(-40, 40, N)
    out = B._warp(photos, B.inverse_affine(-angles), [0])
    expected = torch.stack([F.rotate(photos[i], float(angles[i])) for i in range(N)])
    assert differing(out, expected)[1] < 0.002  # only at exact half-pixel ties
    for angle in (-25.0, 7.0):  # RandomRotation's own maps (a range of one angle)
        out = B.Warp([B.Rotation(angle, angle, [9])])(photos.clone())
        assert differing(out, F.rotate(photos, angle, fill=[9]))[1] < 0.002


def test_flips_are_exact_and_fused_with_rotation_into_one_warp(photos: torch.Tensor) -> None:
    op, why = B.batch_transform(
        v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.RandomVerticalFlip(p=1.0), v2.RandomRotation(10)])
    )
    assert why is None and len(op.ops) == 1 and isinstance(op.ops[0], B.Warp)
    flips = B.Warp([B.Flip(1.0, 0), B.Flip(1.0, 1)])
    assert torch.equal(flips(photos.clone()), photos.flip(-1).flip(-2))
    assert torch.equal(B.Warp([B.Flip(1.0, 0)])(photos.clone()), photos.flip(-1))
    assert torch.equal(B.Warp([B.Flip(0.0, 0)])(photos.clone()), photos)
    # a channels-last batch (as the cache stores images) warps like a contiguous one
    channels_last = photos.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert torch.equal(flips(channels_last), photos.flip(-1).flip(-2))


def test_flip_probability_is_per_image(photos: torch.Tensor) -> None:
    torch.manual_seed(0)
    out = B.Warp([B.Flip(0.5, 0)])(photos.clone())
    flipped = [torch.equal(out[i], photos[i].flip(-1)) for i in range(N)]
    assert 0 < sum(flipped) < N


@pytest.mark.parametrize("name", B.TrivialAugmentWide.NAMES)
def test_trivial_augment_operations_equal_torchvision(photos: torch.Tensor, name: str) -> None:
    ta = B.TrivialAugmentWide(31, [0])
    values, signed = ta.magnitudes[name]
    k = ta.NAMES.index(name)
    sign = np.where((np.arange(N) % 2 == 1) & signed, -1.0, 1.0)
    magnitudes = np.zeros(N) if values is None else values[np.arange(N) * 30 // (N - 1)] * sign
    out = ta.apply(photos.clone(), np.full(N, k), magnitudes)
    reference = v2.TrivialAugmentWide(interpolation=v2.InterpolationMode.NEAREST)
    expected = torch.stack(
        [
            reference._apply_image_or_video_transform(
                photos[i],
                name,
                float(magnitudes[i]),
                interpolation=v2.InterpolationMode.NEAREST,
                fill={torch.Tensor: None, "others": None},
            )
            for i in range(N)
        ]
    )
    largest, fraction = differing(out, expected)
    assert fraction < 0.005 and (largest <= 1 or name in ("ShearX", "ShearY", "Rotate"))


def test_trivial_augment_draws_torchvisions_operations_and_magnitudes() -> None:
    ta = B.TrivialAugmentWide(31, [0])
    reference = v2.TrivialAugmentWide()._AUGMENTATION_SPACE
    assert list(reference) == list(ta.NAMES)
    for name, (fn, signed) in reference.items():
        values, mine_signed = ta.magnitudes[name]
        assert mine_signed == signed
        expected = fn(31, 40, 40)
        assert (values is None) == (expected is None)
        if values is not None:
            assert np.allclose(values, expected.double().numpy())
    op, magnitude = ta.draw(14_000, torch.Generator().manual_seed(1))
    counts = np.bincount(op, minlength=14)
    assert counts.min() > 800 and counts.max() < 1200  # uniform over the 14 operations
    rotations = magnitude[op == ta.NAMES.index("Rotate")]
    assert rotations.min() < -100 and rotations.max() > 100  # both signs, wide range


def test_colour_jitter_draws_factors_and_order_per_image() -> None:
    jitter = B.ColorJitter([(0.9, 1.1), None, (0.5, 1.5), (-0.05, 0.05)])
    images = torch.full((64, 3, 8, 8), 100, dtype=torch.uint8)
    images[:, 0] = 200  # red
    out = jitter(images.clone(), torch.Generator().manual_seed(0))
    assert len({tuple(img[:, 0, 0].tolist()) for img in out}) > 32  # not one draw for the whole batch
    brightness_only = B.ColorJitter([(0.5, 0.5), None, None, None])
    assert torch.equal(brightness_only(images.clone()), F.adjust_brightness(images, 0.5))


def test_crop_with_reflect_padding_takes_a_window_of_the_padded_image(photos: torch.Tensor) -> None:
    op, why = B.batch_transform(v2.RandomCrop(40, padding=4, padding_mode="reflect"))
    assert why is None
    out = op(photos.clone(), torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(photos, (4, 4, 4, 4), mode="reflect")
    for img, src in zip(out, padded, strict=True):
        windows = [src[:, t : t + 40, x : x + 40] for t in range(9) for x in range(9)]
        assert any(torch.equal(img, w) for w in windows)
    assert sum(torch.equal(a, b) for a, b in zip(out, photos, strict=True)) < N  # moved


def test_resized_crop_gives_the_size_and_varies_per_image(photos: torch.Tensor) -> None:
    op, why = B.batch_transform(v2.RandomResizedCrop(24, scale=(0.2, 1.0), antialias=True))
    assert why is None
    out = op(photos.clone(), torch.Generator().manual_seed(0))
    assert out.shape == (N, 3, 24, 24) and out.dtype == torch.uint8
    windows = [op.ops[0].window(40, 40, torch.Generator().manual_seed(s)) for s in range(50)]
    assert all(0 <= t and 0 <= x and t + h <= 40 and x + w <= 40 for t, x, h, w in windows)
    assert len(set(windows)) > 40


def test_unsupported_transforms_say_which_and_recipes_are_batched() -> None:
    for transform, word in [
        (v2.AutoAugment(), "AutoAugment"),
        (v2.RandomRotation(10, interpolation=v2.InterpolationMode.BILINEAR), "RandomRotation"),
        (v2.Compose([v2.RandomHorizontalFlip(), v2.GaussianBlur(3)]), "GaussianBlur"),
    ]:
        op, why = B.batch_transform(transform)
        assert op is None and word in why
    for name in ("dishes_v1", "flip_rotate", "trivialaugment", "cifar", "imagenet", "flip", "basic"):
        node = OmegaConf.load(CONF / "augmentation" / f"{name}.yaml").train
        node = OmegaConf.merge({"dataset": {"image_size": 32}}, {"train": node}).train
        op, why = B.batch_transform(instantiate(node))
        assert why is None, (name, why)
        out = op(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))
        assert out.shape == (4, 3, 32, 32) and out.dtype == torch.uint8


def dishes() -> v2.Compose:
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomRotation(10),
            v2.ColorJitter(0.1, 0.1, 0.1, 0.05),
            v2.TrivialAugmentWide(),
        ]
    )


def test_D5_threaded_loader_batches_do_not_depend_on_threads_and_resume_mid_epoch(photos: torch.Tensor) -> None:
    cache = photos.permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, 3), as the cache stores images
    before = cache.copy()
    dataset = DecodedImages(cache, list(range(N)), dishes())

    def epoch(threads: int, epoch: int = 0, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = BatchLoader(dataset, EpochBatchSampler(N, 5, seed=3), threads=threads)
        loader.batch_sampler.set_epoch(epoch, start)
        return list(loader)

    one, two = epoch(0), epoch(2)
    assert len(one) == 5
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(one, two, strict=True))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(one[2:], epoch(2, start=2), strict=True))  # resumed at batch 2
    assert not torch.equal(one[0][0], epoch(0, epoch=1)[0][0])  # a new epoch: new order and parameters
    assert np.array_equal(cache, before)  # the cache is never augmented in place
    assert isinstance(make_loader(dataset, batch_size=5, shuffle=True, num_workers=2), BatchLoader)
    per_image = DecodedImages(cache, list(range(N)), v2.AutoAugment())
    assert per_image.batch_op is None and "AutoAugment" in per_image.why_per_image
    assert not isinstance(make_loader(per_image, batch_size=5, shuffle=True), BatchLoader)


def test_cached_and_decoded_batches_are_equal(tmp_path, photos: torch.Tensor) -> None:
    from PIL import Image

    paths = []
    for i, img in enumerate(photos[:6]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(paths[-1])
    cached = DecodedImages(photos[:6].permute(0, 2, 3, 1).contiguous().numpy(), list(range(6)), dishes())
    lazy = LazyImages(paths, list(range(6)), 40, dishes())
    a = cached.batch([5, 0, 3], torch.Generator().manual_seed(7))
    b = lazy.batch([5, 0, 3], torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and a[1].tolist() == [5, 0, 3]
