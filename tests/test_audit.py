"""imgclf-audit (issue 29): out-of-fold scores, label issues, duplicates, outliers and the audit folder."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from helpers import SHARED_DATA, compose_cfg, make_folder, read_csv, tiny_overrides
from imgclf.audit.duplicates import duplicates, nearest_pairs
from imgclf.audit.folds import assign_folds, out_of_fold
from imgclf.audit.heads import head_scorer
from imgclf.audit.issues import label_issues
from imgclf.audit.outliers import find_outliers, outlier_scores
from imgclf.audit.pixel_match import Thumbnails, correlation
from imgclf.errors import ConfigError
from imgclf.tasks.config_check import check_config
from imgclf.training.scheduler import Scheduler


def clusters(per_class: int = 30, classes: int = 3, dims: int = 16, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Well separated Gaussian clusters: (1 view, images, dims) features and their true labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, dims)) * 6
    labels = np.repeat(np.arange(classes), per_class)
    features = centres[labels] + rng.normal(0, 1, (len(labels), dims))
    return torch.tensor(features, dtype=torch.float32).unsqueeze(0), labels


def adam(module: nn.Module) -> tuple[torch.optim.Optimizer, Scheduler]:
    optimizer = torch.optim.Adam(module.parameters(), lr=0.05)
    return optimizer, Scheduler(optimizer)


def test_folds_score_every_image_once_by_a_model_that_never_saw_it() -> None:
    labels = np.repeat([0, 1, 2], [30, 20, 13])
    fold_of = assign_folds(labels, 5, seed=3)
    scored: list[int] = []

    def record(kept: np.ndarray, held_out: np.ndarray, fold: int) -> np.ndarray:
        assert not set(kept) & set(held_out)  # the fold's model never sees what it scores
        assert set(kept) | set(held_out) == set(range(len(labels)))
        scored.extend(held_out.tolist())
        return np.full((len(held_out), 3), 1 / 3)

    probs = out_of_fold(fold_of, 3, record)
    assert sorted(scored) == list(range(len(labels)))  # every image exactly once
    assert not np.isnan(probs).any()
    for c in range(3):  # stratified: each fold holds a fifth of every class (+-1)
        counts = np.bincount(fold_of[labels == c], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert (assign_folds(labels, 5, seed=3) == fold_of).all()  # seeded
    assert (assign_folds(labels, 5, seed=4) != fold_of).any()


def test_the_ranking_puts_planted_label_flips_first() -> None:
    features, truth = clusters()
    given = truth.copy()
    flipped = np.array([2, 17, 33, 48, 61, 80])
    given[flipped] = (truth[flipped] + 1) % 3
    head = nn.Linear(features.shape[2], 3)
    scorer = head_scorer(
        head,
        features,
        torch.as_tensor(given),
        optimizers=adam,
        loss_fn=nn.CrossEntropyLoss(),
        epochs=10,
        batch_size=32,
        seed=0,
    )
    probs = out_of_fold(assign_folds(given, 5, seed=0), 3, scorer)
    issues = label_issues(given, probs)
    assert {i.index for i in issues[: len(flipped)]} == set(flipped.tolist())
    assert all(i.suggested == truth[i.index] for i in issues[: len(flipped)])
    assert [i.score for i in issues] == sorted(i.score for i in issues)  # most suspect first


def test_the_list_starts_with_the_n_lowest_scored_images_and_holds_every_noise_rate_flag() -> None:
    """label_issues.csv's first rows are what a user reviews: no image may be left out of the first N (cleanlab's
    estimate of the wrong labels) while one scored as less suspect is in them; cleanlab's default flags follow."""
    from cleanlab.count import num_label_issues
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    probs = rng.dirichlet(np.full(4, 0.5), size=len(labels))
    probs[np.arange(len(labels)), labels] += 0.6
    probs /= probs.sum(1, keepdims=True)
    issues = label_issues(labels, probs)
    quality = get_label_quality_scores(labels, probs)
    listed = np.array([i.index for i in issues])
    count = num_label_issues(labels, probs)
    assert 0 < count < len(issues)  # here the noise-rate flags add images beyond the first N
    assert quality[np.setdiff1d(np.arange(len(labels)), listed[:count])].min() >= quality[listed[:count]].max()
    assert set(np.flatnonzero(find_label_issues(labels, probs))) <= set(listed.tolist())
    assert list(quality[listed]) == sorted(quality[listed])


def test_an_image_unlike_every_class_is_an_outlier_and_the_others_are_not() -> None:
    features, labels = clusters(per_class=40)
    odd = torch.full((1, 1, features.shape[2]), 40.0)  # far from every cluster
    embeddings = torch.nn.functional.normalize(torch.cat([features, odd], dim=1)[0], dim=1)
    probs = np.full((len(embeddings), 3), 1 / 3)
    found = find_outliers(outlier_scores(embeddings), probs, ["a", "b", "c"])
    assert [o.index for o in found] == [len(embeddings) - 1]
    assert "fence" in found[0].why


def made_copies(image: Image.Image) -> list[Image.Image]:
    """The issue's made copies: resized 0.5x and 2x, JPEG quality 30 and 95, a 10% crop, a mirror image."""

    def jpeg(img: Image.Image, quality: int) -> Image.Image:
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    w, h = image.size
    return [
        image.resize((w // 2, h // 2)),
        image.resize((w * 2, h * 2)),
        jpeg(image, 30),
        jpeg(image, 95),
        image.crop((w // 20, h // 20, w - w // 20, h - h // 20)),
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    ]


FOOD = SHARED_DATA / "food101_mini"


@pytest.mark.skipif(not FOOD.is_dir(), reason="needs the food101_mini photos")
def test_made_copies_match_pixel_for_pixel_and_different_photos_do_not() -> None:
    """The pixel check alone, on real photos: every made copy of the issue's kinds reaches the configured
    threshold against its original, and no two different photos of one class do."""
    threshold = compose_cfg("transfer", ["experiment=x"]).audit.duplicate_threshold  # the default, as configured
    files = sorted((FOOD / "train" / "apple_pie").glob("*.jpg"))[:10]
    thumbs = [Thumbnails.of_file(f) for f in files]
    for f, thumb in zip(files[:3], thumbs, strict=False):
        original = Image.open(f).convert("RGB")
        w, h = original.size
        off_centre = original.crop((0, 0, w * 9 // 10, h * 9 // 10))  # the kept part need not be the middle
        for copy in [*made_copies(original), off_centre, off_centre.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]:
            assert correlation(thumb, Thumbnails(copy)) >= threshold
    different = [correlation(a, b) for i, a in enumerate(thumbs) for b in thumbs[i + 1 :]]
    assert max(different) < threshold


def test_a_copy_in_another_file_mode_matches_16_bit_grey_included(tmp_path: Path) -> None:
    """Scans and microscopy come as 16-bit grey: clipped to 8 bits they would be flat and match nothing."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 60000, (30, 40)).astype(np.uint16)
    Image.fromarray(grey).resize((160, 120)).save(tmp_path / "a.png")  # 16-bit grey (I;16)
    as_8_bit = Image.fromarray((grey // 257).astype(np.uint8)).resize((160, 120))
    as_8_bit.convert("CMYK").save(tmp_path / "b.jpg", quality=95)
    as_8_bit.convert("P").save(tmp_path / "c.gif")
    original, cmyk, palette = (Thumbnails.of_file(tmp_path / n) for n in ("a.png", "b.jpg", "c.gif"))
    assert correlation(original, cmyk) > 0.98 and correlation(original, palette) > 0.98


def test_a_flat_image_matches_nothing_and_does_not_divide_by_zero() -> None:
    flat = Thumbnails(Image.new("RGB", (64, 48), (120, 120, 120)))
    noise = Thumbnails(Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)))
    assert correlation(flat, noise) == 0.0 and correlation(flat, flat) == 0.0


@pytest.mark.slow
@pytest.mark.skipif(not FOOD.is_dir(), reason="needs the food101_mini photos")
def test_planted_copies_are_found_and_unrelated_images_are_not(tmp_path: Path) -> None:
    """Real photos, end to end: pretrained embeddings propose the pairs, the pixels decide."""
    from torchvision.transforms import functional as F

    from imgclf.models.efficientnet_lite import EfficientNetLite, LiteFeatures

    files = sorted((FOOD / "train").rglob("*.jpg"))[::15][:24]
    originals = [Image.open(f).convert("RGB") for f in files]
    copies = made_copies(originals[0]) + made_copies(originals[1])[:3]
    images = originals + copies
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    expected = {(0, 24 + i) for i in range(6)} | {(1, 30 + i) for i in range(3)}
    expected |= {(a, b) for a in range(24, 30) for b in range(a + 1, 30)} | {(30, 31), (30, 32), (31, 32)}
    batch = torch.stack(
        [
            F.normalize(
                F.pil_to_tensor(F.center_crop(F.resize(im, 224, antialias=True), 224)).float() / 255,
                EfficientNetLite.input_mean,
                EfficientNetLite.input_std,
            )
            for im in images
        ]
    )
    net = LiteFeatures("lite0", pretrained=True).eval()
    with torch.no_grad():
        embeddings = (net(batch) + net(batch.flip(-1))) / 2  # the image and its mirror, as the audit with tta=flip
    cfg = compose_cfg("transfer", ["experiment=x"])  # the defaults, as configured
    found = duplicates(
        embeddings,
        [None] * len(images),
        paths,
        cfg.audit.duplicate_threshold,
        neighbours=cfg.audit.duplicate_neighbours,
    )
    pairs = {(p.a, p.b) for p in found}
    assert expected <= pairs  # every copy of the same photo
    assert not {(a, b) for a, b in pairs if a < 24 and b < 24}  # no two different photos


def test_a_file_gone_since_it_was_listed_is_compared_with_nothing_and_named(tmp_path: Path, caplog) -> None:
    from imgclf.audit.pixel_match import correlations

    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(files[-1])
    Image.open(files[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(files[2])  # a mirrored copy of 0
    files[1].write_bytes(b"not an image any more")
    found = correlations(files, [(0, 1), (0, 2), (1, 2)])
    assert found[0] == found[2] == -1.0 and found[1] > 0.99
    assert str(files[1]) in caplog.text


def test_the_candidates_are_each_images_nearest_neighbours() -> None:
    embeddings = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    assert nearest_pairs(embeddings, 1, chunk=3) == [(0, 1), (2, 3)]
    assert len(nearest_pairs(embeddings, 10)) == 6  # more neighbours than images: every pair once


def test_identical_files_are_duplicates_whatever_their_embeddings(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    files = []
    for i in range(4):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(files[-1])
    pairs = duplicates(torch.eye(4), ["x", "y", "x", None], files, threshold=0.99)
    assert [(p.a, p.b, p.identical) for p in pairs] == [(0, 2, True)]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("audit.folds=1", "audit.folds"),
        ("audit.duplicate_threshold=1.5", "audit.duplicate_threshold"),
        ("audit.duplicate_neighbours=0", "audit.duplicate_neighbours"),
        ("audit.rank_by=loss", "audit.rank_by"),
        ("audit.include_test=maybe", "audit.include_test"),
        ("audit.gallery_rows=0", "audit.gallery_rows"),
    ],
)
def test_bad_audit_options_are_refused_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        check_config(compose_cfg("transfer", ["experiment=x", "dataset.root=/tmp", override]))


def test_help_and_version_answer_without_torch() -> None:
    probe = (
        "import sys\nsys.argv = ['imgclf-audit', '{flag}']\nfrom imgclf.cli.audit import main\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print('HEAVY', sorted(m for m in ('torch', 'hydra') if m in sys.modules), 'CODE', code)"
    )
    for flag, expected in (("--help", "usage: imgclf-audit"), ("--version", "imgclf-audit (imgclf ")):
        out = subprocess.run([sys.executable, "-c", probe.format(flag=flag)], capture_output=True, text=True).stdout
        assert expected in out and "HEAVY [] CODE 0" in out, out[-500:]


def plant_flips(root: Path, moves: list[tuple[str, str, str]]) -> list[str]:
    """Move train/<from>/<name> into train/<to>/; the moved files' paths relative to ``root``."""
    moved = []
    for name, source, target in moves:
        (root / "train" / source / name).rename(root / "train" / target / f"moved-{name}")
        moved.append(f"train/{target}/moved-{name}")
    return moved


@pytest.mark.slow
def test_the_audit_writes_its_folder_and_leaves_the_checkpoints_alone(tmp_path: Path) -> None:
    from imgclf.experiment.folder import ExperimentDir
    from imgclf.tasks.audit_task import audit

    root = make_folder(tmp_path / "data", {"train": 30, "val": 6, "test": 3}, shape=(32, 32))
    moved = plant_flips(root, [("train_004.jpg", "circle", "stripes"), ("train_007.png", "square", "circle")])
    (root / "train" / "square" / "copy.png").write_bytes((root / "train" / "square" / "train_010.jpg").read_bytes())
    overrides = [o for o in tiny_overrides(tmp_path, root) if not o.startswith(("dataset=", "dataset.resize"))]
    cfg = compose_cfg("transfer", [*overrides, "model=lite0", "dataset.image_size=32", "epochs=20", "tta=none"])
    exp = tmp_path / "experiments" / "tiny"
    exp.mkdir(parents=True)
    (exp / "best.pt").write_bytes(b"a trained model")
    with ExperimentDir(exp, tmp_path / "runs").lock():  # a run of the experiment holds it: refused, nothing written
        with pytest.raises(Exception, match="lock|busy|running"):
            audit(cfg.copy())
    assert not (exp / "audit").exists()
    counts = audit(cfg)
    assert (exp / "best.pt").read_bytes() == b"a trained model"
    issues = read_csv(exp / "audit" / "label_issues.csv")
    assert list(issues[0]) == ["path", "split", "given", "suggested", "score"]
    assert {row["path"] for row in issues[:2]} == set(moved)
    assert counts["images"] == 3 * 36 + 1
    pairs = read_csv(exp / "audit" / "duplicates.csv")
    assert list(pairs[0]) == ["path_a", "path_b", "similarity", "splits"]
    assert {pairs[0]["path_a"], pairs[0]["path_b"]} == {"train/square/copy.png", "train/square/train_010.jpg"}
    assert list(read_csv(exp / "audit" / "outliers.csv")[0]) if counts["outliers"] else True
    summary = (exp / "audit" / "summary.md").read_text()
    assert "dataset.exclude=" in summary and "estimated wrong" in summary
    assert (exp / "audit" / "label_issues-1.png").is_file()


@pytest.mark.slow
def test_a_recipe_without_cached_features_trains_the_whole_network_per_fold(tmp_path: Path) -> None:
    from imgclf.tasks.audit_task import audit

    root = make_folder(tmp_path / "data", {"train": 12, "val": 4, "test": 2}, shape=(16, 16))
    cfg = compose_cfg("train", [*tiny_overrides(tmp_path, root), "audit.folds=2", "epochs=1"])
    counts = audit(cfg)
    assert counts["images"] == 3 * 16
    summary = (tmp_path / "experiments" / "tiny" / "audit" / "summary.md").read_text()
    assert "each a full training run" in summary and "EfficientNet-Lite0" in summary
    assert (
        list(read_csv(tmp_path / "experiments" / "tiny" / "audit" / "label_issues.csv")[0])
        if counts["issues"]
        else True
    )
