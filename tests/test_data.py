"""Folder layouts, splits and the one image loader."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import CLASSES, make_folder
from imgclf.data.cache import decode
from imgclf.data.dataset import DecodedImages, EpochBatchSampler
from imgclf.data.folder import FolderSource, remap
from imgclf.data.images import load_image
from imgclf.data.splits_file import read_splits, write_splits
from imgclf.errors import DataError


def source(root: Path, **kw) -> FolderSource:
    return FolderSource(str(root), **kw)


def test_train_only_layout_carves_stratified_seeded_val_and_test(train_only_folder: Path) -> None:
    splits = source(train_only_folder, val_fraction=0.2, test_fraction=0.2).scan()
    assert splits.classes == list(CLASSES)
    for split, per_class in (("train", 12), ("val", 4), ("test", 4)):
        assert Counter(label for _, label in splits.samples[split]) == {i: per_class for i in range(3)}
    all_paths = [p for items in splits.samples.values() for p, _ in items]
    assert len(all_paths) == len(set(all_paths)) == 60  # disjoint and complete
    again = source(train_only_folder, val_fraction=0.2, test_fraction=0.2).scan()
    assert again.samples == splits.samples
    other_seed = source(train_only_folder, val_fraction=0.2, test_fraction=0.2, split_seed=1).scan()
    assert other_seed.samples["test"] != splits.samples["test"]


def test_given_splits_are_used_as_they_are(tiny_folder: Path) -> None:
    splits = source(tiny_folder).scan()
    assert splits.counts() == {"train": 48, "val": 18, "test": 18}
    assert all("/val/" in p for p, _ in splits.samples["val"])


def test_flat_class_folders_are_split_three_ways(tmp_path: Path) -> None:
    make_folder(tmp_path, {"x": 10})
    flat = tmp_path / "x"
    splits = source(flat, val_fraction=0.2, test_fraction=0.2).scan()
    assert splits.counts() == {"train": 18, "val": 6, "test": 6}


def test_A4_hidden_and_tool_folders_never_become_classes(tmp_path: Path) -> None:
    make_folder(tmp_path, {"train": 3})
    for junk in (".ipynb_checkpoints", "__MACOSX", ".git"):
        (tmp_path / "train" / junk).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / junk / "x.png")
    (tmp_path / "train" / "circle" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "train" / "circle" / "._0.jpg").write_bytes(b"junk")
    (tmp_path / "train" / "circle" / "notes.txt").write_text("hi")
    splits = source(tmp_path, val_fraction=0, test_fraction=0).scan()
    assert splits.classes == list(CLASSES)
    assert splits.counts()["train"] == 9
    assert splits.ignored == {".txt": 1, ".DS_Store": 1, "._* (macOS metadata)": 1}


@pytest.mark.parametrize(
    "problem,match",
    [
        ("missing_root", "dataset folder not found"),
        ("empty_class", "hold no images.*square"),
        ("case_clash", "differ only by case"),
        ("unknown_test_class", "not in the train classes"),
        ("no_class_folders", "no class folders"),
    ],
)
def test_A6_A12_bad_layouts_stop_with_a_message(tmp_path: Path, problem: str, match: str) -> None:
    root = tmp_path / "data"
    if problem != "missing_root":
        make_folder(root, {"train": 2, "test": 1})
    if problem == "empty_class":
        for f in (root / "train" / "square").iterdir():
            f.unlink()
    elif problem == "case_clash":
        (root / "train" / "Circle").mkdir()
    elif problem == "unknown_test_class":
        (root / "test" / "triangle").mkdir()
    elif problem == "no_class_folders":
        root = tmp_path / "flat"
        root.mkdir()
        Image.new("RGB", (8, 8)).save(root / "a.png")
    with pytest.raises(DataError, match=match):
        source(root).scan()


def test_A6_remap_matches_classes_by_name(tiny_folder: Path) -> None:
    splits = source(tiny_folder).scan()
    reordered = ["stripes", "circle", "square"]
    mapped = remap(splits, reordered)
    path, label = splits.samples["test"][0]
    assert dict(mapped.samples["test"])[path] == reordered.index(splits.classes[label])
    with pytest.raises(DataError, match="not among the model's classes"):
        remap(splits, ["circle", "square"])


def test_A13_splits_file_roundtrip_and_missing_files(tmp_path: Path, train_only_folder: Path) -> None:
    splits = source(train_only_folder).scan()
    first = splits.samples["train"][0][0]
    write_splits(splits, tmp_path / "splits.csv", {first: "abc123"})
    back, digests = read_splits(tmp_path / "splits.csv", splits.classes)
    assert back.samples == splits.samples
    assert digests[first] == "abc123" and digests[splits.samples["test"][0][0]] == ""
    with pytest.raises(DataError, match="not in the checkpoint's classes"):
        read_splits(tmp_path / "splits.csv", ["circle"])


def _cut_at_line(text: str) -> str:
    lines = text.splitlines(keepends=True)
    return "".join(lines[: len(lines) // 2])


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda text: _cut_at_line(text).encode(), "is not the file this experiment wrote"),  # still valid CSV
        (lambda text: text.encode()[: len(text) // 2 + 7], "is not the file this experiment wrote"),  # mid-line
        (lambda text: bytes(range(256)) * 4, "is not the file this experiment wrote"),
    ],
)
def test_G1_a_cut_or_damaged_splits_file_is_refused_with_its_path(
    tmp_path: Path, train_only_folder: Path, damage, message: str
) -> None:
    splits = source(train_only_folder).scan()
    path = tmp_path / "splits.csv"
    write_splits(splits, path)
    rows = sum(len(s) for s in splits.samples.values())
    path.write_bytes(damage(path.read_text()))
    with pytest.raises(DataError, match=message) as info:
        read_splits(path, splits.classes)
    assert str(path) in str(info.value) and f"({rows} rows" in str(info.value)


def test_G1_a_splits_file_without_its_checksum_record_is_parsed_with_clear_errors(
    tmp_path: Path, train_only_folder: Path
) -> None:
    splits = source(train_only_folder).scan()
    path = tmp_path / "splits.csv"
    write_splits(splits, path)
    (tmp_path / "splits.csv.sha256").unlink()  # an experiment from before the record, or deleted on purpose
    assert read_splits(path, splits.classes)[0].samples == splits.samples
    path.write_bytes(path.read_bytes()[:-30])  # cut mid-line
    with pytest.raises(DataError, match=rf"{path.name}, line \d+: expected the columns path, label, split"):
        read_splits(path, splits.classes)
    path.write_bytes(b"path,label,split\n\xff\xfe\x00garbage\n")
    with pytest.raises(DataError, match="not a readable splits file"):
        read_splits(path, splits.classes)


def test_A1_A2_truncated_and_fake_images_are_named(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:400])
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    assert load_image(good).size == (64, 64)
    for bad in (truncated, fake):
        with pytest.raises(DataError, match=bad.name):
            load_image(bad)


def test_A9_extreme_aspect_ratio_is_rejected(tmp_path: Path) -> None:
    Image.new("RGB", (2000, 4)).save(tmp_path / "strip.png")
    with pytest.raises(DataError, match=r"strip.png.*aspect ratio"):
        load_image(tmp_path / "strip.png")


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "L", "I;16"])
def test_A11_every_mode_becomes_rgb(tmp_path: Path, mode: str) -> None:
    if mode == "I;16":
        img = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    else:
        img = Image.new(mode, (8, 8))
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (8, 8)
    if mode == "I;16":  # scaled, not clipped to white
        assert 120 <= np.asarray(out)[0, 0, 0] <= 135
    if mode in ("RGBA", "LA"):  # fully transparent pixels land on the white background
        assert np.asarray(out)[0, 0].tolist() == [255, 255, 255]


def test_A10_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    (tmp_path / "r.jpg").write_bytes(buf.getvalue())
    assert load_image(tmp_path / "r.jpg").size == (10, 20)


def test_decoded_dataset_serves_uint8_at_the_working_size(tiny_folder: Path) -> None:
    path = source(tiny_folder).scan().samples["train"][0][0]
    image = decode(path, 16)
    assert image.dtype == np.uint8 and image.shape == (16, 16, 3)
    chw = torch.from_numpy(image).permute(2, 0, 1)
    plain, label = DecodedImages(image[None], [2])[0]
    assert torch.equal(plain, chw) and int(label) == 2
    flipped, _ = DecodedImages(image[None], [2], transform=lambda img: img.transpose(0))[0]  # PIL mirror
    assert torch.equal(flipped, chw.flip(-1))
    with pytest.raises(TypeError, match="leave float conversion and Normalize out"):
        DecodedImages(image[None], [2], transform=lambda img: chw.float())[0]


def test_epoch_batch_sampler_is_a_function_of_seed_and_epoch_and_can_skip() -> None:
    sampler = EpochBatchSampler(11, 3, seed=5)
    sampler.set_epoch(2)
    full = list(sampler)
    assert sorted(i for b in full for i in b) == list(range(11)) and len(full) == len(sampler) == 4
    sampler.set_epoch(2, start_batch=2)
    assert list(sampler) == full[2:]
    sampler.set_epoch(3)
    assert list(sampler) != full
    # a trailing batch of one image is dropped when shuffling (BatchNorm cannot train on it)
    assert len(EpochBatchSampler(7, 3)) == 2 and len(EpochBatchSampler(7, 3, shuffle=False)) == 3


def test_A6_configured_class_list_sets_the_order_and_must_match(tiny_folder: Path) -> None:
    order = ["stripes", "circle", "square"]
    splits = source(tiny_folder, classes=order).scan()
    assert splits.classes == order
    path, label = splits.samples["train"][0]
    assert order[label] == Path(path).parent.name  # labels follow the configured order
    with pytest.raises(DataError, match=r"folders not in the list \['stripes'\].*without a folder \['zigzag'\]"):
        source(tiny_folder, classes=["circle", "square", "zigzag"]).scan()


def test_G1_test_py_refuses_a_splits_file_cut_at_a_line_boundary(tmp_path: Path, tiny_folder: Path) -> None:
    import imgclf.tasks as tasks
    from helpers import compose_cfg, tiny_overrides

    cfg = lambda: compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "epochs=1"))  # noqa: E731
    tasks.train(cfg())
    path = tmp_path / "experiments" / "tiny" / "splits.csv"
    path.write_text(_cut_at_line(path.read_text()))  # fewer test rows, still a valid CSV
    with pytest.raises(DataError, match="splits.csv .* is not the file this experiment wrote"):
        tasks.test(cfg())
    assert not (tmp_path / "experiments" / "tiny" / "test" / "metrics.json").exists()


# --- A1, A6, A10, A11: the faults themselves, through every reader ----------------------------------------------


def noisy(path: Path, fmt: str, size: int = 128) -> bytes:
    """A noisy picture saved as ``fmt`` (noise does not compress: the pixel data is most of the file); its bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, fmt)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def test_A1_a_file_cut_in_its_pixel_data_passes_verify_but_every_reader_names_it(tmp_path: Path) -> None:
    from PIL import ImageFile

    from imgclf.data.cache import DecodeCache
    from imgclf.data.prepare import load_splits

    root = make_folder(tmp_path / "data", {"train": 3})
    cut_jpeg, cut_png = root / "train" / "circle" / "cut.jpg", root / "train" / "square" / "cut.png"
    for path, fmt in ((cut_jpeg, "JPEG"), (cut_png, "PNG")):
        path.write_bytes(noisy(path, fmt)[: int(path.stat().st_size * 0.6)])  # headers intact, pixels cut
    with Image.open(cut_jpeg) as img:
        img.verify()  # Pillow's own check passes: a pre-scan that only verifies lets this JPEG through
    for path in (cut_jpeg, cut_png):
        with pytest.raises(DataError, match=rf"{path}: cannot be read as an image \(image file is truncated"):
            load_image(path)
        with pytest.raises(DataError, match=str(path)):  # the cache's decode (JPEG at draft scale) too
            decode(str(path), 16)
    whole = source(root, val_fraction=0, test_fraction=0).scan()  # every file in train
    with pytest.raises(DataError, match=r"^2 file\(s\) cannot be used") as info:
        load_splits(whole, DecodeCache(None, "memory", progress=False), 16, names=("train",))
    assert str(cut_jpeg) in str(info.value) and str(cut_png) in str(info.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # never switched on, for this process or anyone else's code


def test_A6_a_split_without_a_class_folder_is_mapped_by_name_with_a_warning(tmp_path: Path, caplog) -> None:
    root = make_folder(tmp_path, {"train": 2, "test": 2})
    for image in (root / "test" / "circle").iterdir():
        image.unlink()
    (root / "test" / "circle").rmdir()  # test/ holds square and stripes only: on its own it would index them 0, 1
    splits = source(root).scan()
    assert splits.classes == list(CLASSES)
    labels = {Path(path).parent.name: label for path, label in splits.samples["test"]}
    assert labels == {"square": 1, "stripes": 2}  # the train classes' indices, by name
    assert f"{root / 'test'} has no folder for class 'circle'" in caplog.text


def test_A10_predict_turns_an_exif_rotated_photo_as_training_does(trained_tiny, tmp_path: Path) -> None:
    from imgclf.inference import Predictor

    _, exp = trained_tiny
    stored = np.zeros((32, 16, 3), np.uint8)  # 16 wide, 32 high as stored: red on top, blue below
    stored[:16], stored[16:] = (255, 0, 0), (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: 32 wide, blue on the left, red on the right
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    predictor = Predictor.load(exp / "best.pt", device="cpu")
    seen = predictor.load_image(tmp_path / "phone.jpg")  # (3, H, W) at the model's size
    trained_on = torch.from_numpy(decode(str(tmp_path / "phone.jpg"), predictor.image_size)).permute(2, 0, 1)
    assert torch.equal(seen, trained_on)  # the very pixels training saw
    left, right = seen[:, :, :4].float().mean((1, 2)), seen[:, :, -4:].float().mean((1, 2))
    assert left[2] > 200 > left[0] and right[0] > 200 > right[2]  # turned as displayed, not as stored


def test_A11_palette_transparency_and_an_animation_become_rgb_deliberately(tmp_path: Path) -> None:
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 black, declared transparent; index 1 red
    palette.paste(1, (0, 0, 2, 4))
    palette.save(tmp_path / "logo.png", transparency=0)
    frames = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    for read in (lambda p: np.asarray(load_image(p)), lambda p: decode(str(p), 4)):  # loader and cache
        logo = read(tmp_path / "logo.png")
        assert logo[0, 0].tolist() == [255, 0, 0]
        assert logo[0, -1].tolist() == [255, 255, 255]  # transparent on the white background, not palette black
        assert read(tmp_path / "anim.gif")[0, 0].tolist() == [255, 0, 0]  # the first frame
