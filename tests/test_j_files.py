"""docs/reliability.md J4, J9 and J11: files the user has every right to have. An image rewritten with its size
and mtime put back, a file name that is not UTF-8, a cache folder that cannot be written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import imgclf.tasks as tasks
from helpers import CLASSES, StopAfter, compose_cfg, draw, make_folder, read_csv, tiny_overrides
from imgclf.cli import predict
from imgclf.data.cache import DecodeCache, decode
from imgclf.errors import DataError
from imgclf.experiment.run_log import read_metrics
from imgclf.training.state import Interrupted


def rewrite_keeping_stat(path: Path, kind: int, seed: int = 1) -> None:
    """Rewrite the BMP at ``path`` with another picture of the same size, then put its times back
    (``os.utime``): to ``stat``, nothing happened (J4)."""
    before = path.stat()
    draw(kind, np.random.default_rng(seed)).save(path, format="BMP")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def add_bmp(folder: Path, kind: int, name: str = "victim.bmp") -> Path:
    """A 24x24 BMP (uncompressed: any other 24x24 picture has the same size in bytes)."""
    path = folder / name
    draw(kind, np.random.default_rng(0)).save(path, format="BMP")
    return path


# --- J4: an image rewritten with the same size and mtime ------------------------------------------------------


def test_J4_the_disk_cache_sees_a_rewrite_that_kept_size_and_mtime(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "data", {"": 2})
    paths = sorted(str(p) for p in folder.rglob("*.*"))
    victim = add_bmp(folder / "circle", 0)
    paths.append(str(victim))
    cache = DecodeCache(tmp_path / "cache", mode="disk", progress=False)
    first, report = cache.load(paths, 16)
    rewrite_keeping_stat(victim, 2)
    again, again_report = cache.load(paths, 16)
    assert np.array_equal(again[-1].numpy(), decode(str(victim), 16)), "the old pixels were served"
    assert not torch.equal(again[-1], first[-1]) and torch.equal(again[:-1], first[:-1])
    assert again_report.digests[-1] != report.digests[-1]  # the SHA-1 compared with splits.csv's


@pytest.mark.slow
def test_J4_resume_refuses_and_test_py_scores_the_new_pixels_after_a_rewrite_that_kept_size_and_mtime(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    folder = make_folder(tmp_path / "data", {"train": 8, "val": 3, "test": 3})
    train_victim = add_bmp(folder / "train" / "circle", 0)
    test_victim = add_bmp(folder / "test" / "circle", 0)
    args = tiny_overrides(tmp_path, folder, "epochs=2")
    with pytest.raises(Interrupted):
        tasks.train(compose_cfg("train", args), stop_signal=lambda: StopAfter(1))
    rewrite_keeping_stat(train_victim, 1)
    with pytest.raises(DataError, match=r"changed since.*victim\.bmp.*resuming would train on different data"):
        tasks.train(compose_cfg("train", args))

    tasks.train(compose_cfg("train", [*args, "overwrite=true"]))
    tasks.test(compose_cfg("train", args))  # decodes the test split into the cache
    rewrite_keeping_stat(test_victim, 1)
    tasks.test(compose_cfg("train", args))
    assert "changed since this experiment's splits.csv" in caplog.text and "victim.bmp" in caplog.text
    exp = tmp_path / "experiments" / "tiny"
    reported = next(r for r in read_csv(exp / "test" / "predictions.csv") if r["path"].endswith("victim.bmp"))
    out = tmp_path / "predicted.csv"
    assert predict.main([str(test_victim), "--checkpoint", str(exp / "best.pt"), "--output", str(out)]) == 0
    capsys.readouterr()
    predicted = read_csv(out)[0]
    assert predicted["top1"] == reported["top1"]
    assert float(predicted["p1"]) == pytest.approx(float(reported["p1"]), abs=1e-4)


# --- J9: a file name that is not UTF-8 ------------------------------------------------------------------------

NAME = b"caf\xe9.png"  # Latin-1 "café": not UTF-8; Python holds it as the str "caf\udce9.png" (surrogateescape)
SHOWN = "caf\\xe9.png"  # how CSV, JSON and messages write it: the byte as \xe9


def add_latin1_files(folder: Path) -> list[bytes]:
    """A PNG named ``NAME`` in every class folder of every split (written through a bytes path)."""
    made = []
    for split in ("train", "val", "test"):
        for kind, name in enumerate(CLASSES):
            path = os.fsencode(folder / split / name) + b"/" + NAME
            with open(path, "wb") as f:
                draw(kind, np.random.default_rng(kind)).save(f, format="PNG")
            made.append(path)
    return made


@pytest.mark.slow
def test_J9_a_name_that_is_not_utf8_is_trained_resumed_tested_and_predicted(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = make_folder(tmp_path / "data", {"train": 6, "val": 2, "test": 2})
    add_latin1_files(folder)
    args = tiny_overrides(tmp_path, folder, "epochs=2")
    with pytest.raises(Interrupted):
        tasks.train(compose_cfg("train", args), stop_signal=lambda: StopAfter(1))
    exp = tmp_path / "experiments" / "tiny"
    splits_text = (exp / "splits.csv").read_text(encoding="utf-8")  # valid UTF-8: the byte is escaped
    assert splits_text.count(SHOWN) == 9
    tasks.train(compose_cfg("train", args))  # resume: splits.csv's escaped names find the same files
    assert len(read_metrics(exp / "metrics.jsonl")) == 2
    doctor = json.loads((exp / "doctor.json").read_text(encoding="utf-8"))
    assert doctor["usable"]["train"] == {name: 7 for name in CLASSES}
    leaked = [path for group in doctor["leakage"] for path in group if path.endswith("/" + SHOWN)]
    assert len(leaked) == 9  # the same picture in train, val and test: named, escaped

    tasks.test(compose_cfg("train", args))
    rows = read_csv(exp / "test" / "predictions.csv")
    assert sum(r["path"].endswith("/" + SHOWN) for r in rows) == 3 and len(rows) == 9

    for output in ("p.csv", "p.json"):
        code = predict.main(
            [str(folder / "test"), "--checkpoint", str(exp / "best.pt"), "--output", str(tmp_path / output)]
        )
        assert code == 0
    assert SHOWN in capsys.readouterr().out  # the table
    records = json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))["predictions"]
    assert sum(r["path"].endswith("/" + SHOWN) for r in records) == 3
    predicted = {r["path"]: r for r in read_csv(tmp_path / "p.csv")}
    assert sum(p.endswith("/" + SHOWN) for p in predicted) == 3
    test_files = [str(p) for p in (folder / "test").rglob("*.png") if "caf" in str(p)]
    reported = {r["path"]: r for r in rows}
    for path in test_files:
        shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        assert predicted[shown]["top1"] == reported[shown]["top1"]


def test_J9_a_bad_file_whose_name_is_not_utf8_is_named_escaped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = make_folder(tmp_path / "data", {"train": 6, "val": 2, "test": 2})
    with open(os.fsencode(folder / "train" / "circle") + b"/bad\xff.png", "wb") as f:
        f.write(b"not a picture")
    args = tiny_overrides(tmp_path, folder, "epochs=1")
    with pytest.raises(DataError, match=r"\[train\] \S+/bad\\xff\.png: ") as error:
        tasks.train(compose_cfg("train", args))
    str(error.value).encode("utf-8")  # the message can be printed and logged anywhere
    tasks.train(compose_cfg("train", [*args, "dataset.bad_files=skip"]))
    assert "e.g. " + str(folder / "train" / "circle" / "bad\\xff.png") in caplog.text


def test_J9_the_report_captions_a_mistake_whose_name_is_not_utf8(tmp_path: Path) -> None:
    from imgclf.reporting import figures

    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    paths = [os.fsdecode(b"/data/caf\xe9.png"), "/data/ok.png"]
    fig = figures.mistakes_figure(
        probs, torch.tensor([1, 1]), ["a", "b"], lambda i: np.zeros((8, 8, 3), np.uint8), paths=paths
    )
    figures.save(fig, tmp_path / "misclassified.png")  # Matplotlib cannot draw a surrogate
    assert (tmp_path / "misclassified.png").stat().st_size > 0


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_J9_manifests_written_by_imgclf_split_find_a_name_that_is_not_utf8_again(tmp_path: Path, fmt: str) -> None:
    from imgclf.data.folder import FolderSource
    from imgclf.data.manifest import ManifestSource, write_manifests

    folder = make_folder(tmp_path / "data", {"train": 2, "val": 1, "test": 1})
    add_latin1_files(folder)
    splits = FolderSource(str(folder)).scan()
    written = write_manifests(splits, tmp_path / "lists", folder, fmt)
    assert (
        sum(
            p.read_text(encoding="utf-8").count(SHOWN.replace("\\", "\\\\") if fmt == "json" else SHOWN)
            for p in written
        )
        == 9
    )
    again = ManifestSource(str(folder), *(str(tmp_path / "lists" / f"{s}.{fmt}") for s in ("train", "val", "test")))
    assert again.scan().samples == splits.samples


# --- J11: a paths.cache that cannot be written -----------------------------------------------------------------


def unwritable_cache(tmp_path: Path, how: str) -> Path:
    """A ``paths.cache`` nobody can write. Tests run as root here, and root ignores permission bits, so a
    read-only folder (chmod 0o500) is only tried as another user; a folder under a regular file fails for
    everyone (NotADirectoryError at the mkdir), root included."""
    if how == "under a file":
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("a file where the cache folder's parent should be")
        return blocker / "cache"
    if os.geteuid() == 0:
        pytest.skip("root writes into a chmod 0o500 folder anyway; 'under a file' covers root")
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    return folder / "cache"


HOW = ["under a file", "read-only folder"]


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("mode", ["memory", "none"])
def test_J11_memory_and_none_train_and_test_with_an_unwritable_cache_and_never_create_it(
    tmp_path: Path, tiny_folder: Path, mode: str, how: str
) -> None:
    cache = unwritable_cache(tmp_path, how)
    args = tiny_overrides(tmp_path, tiny_folder, "epochs=1", f"loader.cache={mode}", f"paths.cache={cache}")
    tasks.train(compose_cfg("train", args))
    tasks.test(compose_cfg("train", args))
    assert (tmp_path / "experiments" / "tiny" / "test" / "predictions.csv").exists()
    assert not cache.exists()


@pytest.mark.parametrize("how", HOW)
def test_J11_the_disk_cache_in_an_unwritable_folder_is_one_clear_error(
    tmp_path: Path, tiny_folder: Path, how: str
) -> None:
    cache = unwritable_cache(tmp_path, how)
    args = tiny_overrides(tmp_path, tiny_folder, "epochs=1", f"paths.cache={cache}")
    with pytest.raises(DataError) as error:
        tasks.train(compose_cfg("train", args))
    message = str(error.value)
    assert str(cache) in message and "loader.cache=memory" in message and "paths.cache=" in message
    assert "free" not in message  # not a full disk: no advice to free space
