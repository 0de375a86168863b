"""predict.py on the session's tiny trained model: agreement with test.py, bad files, options,
temperature, and checkpoints that must not be trusted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgclf.tasks as tasks
from helpers import CLASSES, SHARED_DATA, compose_cfg, copy_trained, read_csv, run_cli
from imgclf.cli import predict
from imgclf.errors import CheckpointError
from imgclf.experiment.checkpoint import load_checkpoint, save_atomic
from imgclf.inference import Predictor


@pytest.fixture
def trained(trained_tiny: tuple[list[str], Path], tmp_path: Path) -> tuple[list[str], Path]:
    return copy_trained(trained_tiny, tmp_path)


def data_root(overrides: list[str]) -> Path:
    return Path(next(o for o in overrides if o.startswith("dataset.root=")).split("=", 1)[1])


def mixed_folder(folder: Path, good: list[Path]) -> Path:
    """``good`` images copied into ``folder`` (one in a subfolder), plus a text file named .jpg, a
    truncated JPEG, a hidden file and a non-image file."""
    (folder / "sub").mkdir(parents=True)
    for i, path in enumerate(good):
        shutil.copy(path, folder / ("sub" if i == 0 else ".") / f"good{i}{path.suffix}")
    (folder / "notes.jpg").write_text("not an image")
    jpeg = next(p for p in good if p.suffix == ".jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (folder / ".hidden.png").write_bytes(b"")
    (folder / "readme.txt").write_text("skipped: not an image extension")
    return folder


def run_predict(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = predict.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_F1_predictions_match_test_reports_and_bad_files_get_error_rows(trained, tmp_path, capsys) -> None:
    overrides, exp = trained
    tasks.test(compose_cfg("train", overrides))
    report = {str(Path(r["path"]).resolve()): r for r in read_csv(exp / "test" / "predictions.csv")}
    test_files = sorted((data_root(overrides) / "test").rglob("*.*"))
    folder = mixed_folder(tmp_path / "photos", test_files)

    code, out, err = run_predict(capsys, folder, "--checkpoint", exp / "best.pt", "--output", tmp_path / "p.csv")
    assert code == 1, "a file that cannot be read makes the exit status non-zero"
    rows = {Path(r["path"]).name: r for r in read_csv(tmp_path / "p.csv")}
    assert set(rows) == {f"good{i}{p.suffix}" for i, p in enumerate(test_files)} | {"notes.jpg", "truncated.jpg"}
    assert "not an image file" in rows["notes.jpg"]["error"] and rows["notes.jpg"]["pred"] == ""
    assert "truncated" in rows["truncated.jpg"]["error"].lower() or "cannot be read" in rows["truncated.jpg"]["error"]
    for i, path in enumerate(test_files):  # the same class and probability as test.py's report
        row, expected = rows[f"good{i}{path.suffix}"], report[str(path.resolve())]
        assert row["error"] == "" and row["pred"] == expected["pred"]
        assert float(row["confidence"]) == pytest.approx(float(expected["confidence"]), abs=1e-4)
        probs = [float(row[f"p{k}"]) for k in (1, 2, 3)]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert {row["top1"], row["top2"], row["top3"]} == set(CLASSES)
    assert "ERROR" in out and "2 could not be read" in err


def test_json_output_category_names_and_min_confidence(trained, tmp_path, capsys) -> None:
    overrides, exp = trained
    images = sorted((data_root(overrides) / "val").rglob("*.png"))[:4]
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"circle": "Round thing", "square": "Box"}))
    code, out, err = run_predict(
        capsys,
        *images,
        "--checkpoint",
        exp / "best.pt",
        "--category-names",
        names,
        "--min-confidence",
        "1.0",
        "--output",
        tmp_path / "p.json",
        "--top-k",
        "2",
    )
    assert code == 0
    records = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert [r["path"] for r in records] == [str(p) for p in images]
    display = {"circle": "Round thing", "square": "Box", "stripes": "stripes"}
    for record in records:
        assert len(record["top_k"]) == 2 and record["error"] is None
        assert record["name"] == display[record["pred"]]
        assert [t["name"] for t in record["top_k"]] == [display[t["class"]] for t in record["top_k"]]
        assert record["low_confidence"] is True  # nothing is 100% sure
    assert "no name for 1 class(es) (stripes)" in err and "below 1" in out

    run_predict(
        capsys, *images, "--checkpoint", exp / "best.pt", "--min-confidence", "0", "--output", tmp_path / "q.csv"
    )
    assert all(r["low_confidence"] == "false" for r in read_csv(tmp_path / "q.csv"))

    by_index = tmp_path / "by_index.json"
    by_index.write_text(json.dumps({"0": "first", "1": "second", "2": "third"}))
    run_predict(
        capsys,
        images[0],
        "--checkpoint",
        exp / "best.pt",
        "--category-names",
        by_index,
        "--output",
        tmp_path / "r.json",
    )
    record = json.loads((tmp_path / "r.json").read_text())["predictions"][0]
    assert record["name"] == {"circle": "first", "square": "second", "stripes": "third"}[record["pred"]]


def test_top_k_larger_than_the_class_count_is_clamped_with_a_warning(trained, tmp_path, capsys) -> None:
    overrides, exp = trained
    image = next((data_root(overrides) / "test").rglob("*.png"))
    code, _, err = run_predict(
        capsys, image, "--checkpoint", exp / "best.pt", "--top-k", "10", "--output", tmp_path / "p.csv"
    )
    assert code == 0
    assert "--top-k 10 is more than the model's 3 classes; showing 3" in err
    header = (tmp_path / "p.csv").read_text().splitlines()[0].split(",")
    assert [h for h in header if h.startswith("top")] == ["top1", "top2", "top3"]


def test_F1_globs_missing_paths_and_plots(trained, tmp_path, capsys) -> None:
    overrides, exp = trained
    root = data_root(overrides)
    pattern = str(root / "test" / "**" / "*.jpg")
    code, out, _ = run_predict(
        capsys,
        pattern,
        tmp_path / "nothing_here",
        str(tmp_path / "*.gif"),
        "--checkpoint",
        exp / "best.pt",
        "--output",
        tmp_path / "p.csv",
        "--plot",
        tmp_path / "p.png",
    )
    assert code == 1
    rows = read_csv(tmp_path / "p.csv")
    jpgs = sorted(str(p) for p in (root / "test").rglob("*.jpg"))
    assert sorted(r["path"] for r in rows if not r["error"]) == jpgs
    errors = {r["path"]: r["error"] for r in rows if r["error"]}
    assert errors == {
        str(tmp_path / "nothing_here"): "no such file or folder",
        str(tmp_path / "*.gif"): "the pattern matches no image file",
    }
    pages = sorted(tmp_path.glob("p*.png"))
    assert pages[0].name == "p.png" and len(pages) == -(-len(jpgs) // predict.PLOT_ROWS)
    with Image.open(pages[0]) as img:
        assert img.size[0] > 300 and img.size[1] > 300


def test_F1_temperature_from_the_checkpoint_scales_probabilities(trained, capsys) -> None:
    overrides, exp = trained
    image = next((data_root(overrides) / "test").rglob("*.png"))
    before = Predictor.load(exp / "best.pt", device="cpu")
    payload = load_checkpoint(exp / "best.pt")
    save_atomic({**payload, "temperature": 3.0}, exp / "best.pt")
    after = Predictor.load(exp / "best.pt", device="cpu")
    assert after.temperature == 3.0
    tensor = before.load_image(image)
    with torch.inference_mode():
        logits = before.model(tensor[None]).float()
    p_before, p_after = before.probabilities([tensor])[0], after.probabilities([tensor])[0]
    torch.testing.assert_close(p_after, torch.softmax(logits[0] / 3.0, 0))
    assert p_after.argmax() == p_before.argmax() and p_after.max() < p_before.max()


def test_F1_D1_missing_experiment_lists_the_trained_ones(trained, tmp_path, capsys) -> None:
    _, exp = trained
    code, _, err = run_predict(capsys, tmp_path, "--experiment", "nope", "--experiments-dir", exp.parent)
    assert code == 2
    assert f"no checkpoint {exp.parent / 'nope' / 'best.pt'}" in err and "tiny" in err
    code, _, err = run_predict(capsys, tmp_path, "--checkpoint", tmp_path / "missing.pt")
    assert code == 2 and "checkpoint not found" in err
    names = tmp_path / "bad.json"
    names.write_text("{not json")
    code, _, err = run_predict(capsys, tmp_path, "--checkpoint", exp / "best.pt", "--category-names", names)
    assert code == 2 and f"--category-names {names}: cannot be read as JSON" in err
    (tmp_path / "a_file").write_text("")
    image = next((data_root(trained[0]) / "test").rglob("*.png"))
    code, _, err = run_predict(
        capsys, image, "--checkpoint", exp / "best.pt", "--output", tmp_path / "a_file" / "p.csv"
    )
    assert code == 2 and "cannot write" in err and "a_file" in err
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(tmp_path), "--checkpoint", str(exp / "best.pt"), "--min-confidence", "1.5"])
    assert exit_info.value.code == 2


def test_F2_a_checkpoint_cannot_make_predict_run_code(trained, tmp_path) -> None:
    _, exp = trained
    payload = load_checkpoint(exp / "best.pt")
    marker = tmp_path / "pwned"
    evil_model = {**payload["config"], "model": {"_target_": "os.system", "command": f"touch {marker}"}}
    save_atomic({**payload, "config": evil_model}, tmp_path / "evil_model.pt")
    with pytest.raises(CheckpointError, match="model 'os.system' is not one of imgclf's models"):
        Predictor.load(tmp_path / "evil_model.pt")
    augmentation = {"eval": {"_target_": "builtins.exec", "source": f"open('{marker}', 'w')"}}
    save_atomic({**payload, "config": {**payload["config"], "augmentation": augmentation}}, tmp_path / "evil_tf.pt")
    with pytest.raises(CheckpointError, match="evaluation transform 'builtins.exec' is not one predict applies"):
        Predictor.load(tmp_path / "evil_tf.pt")
    assert not marker.exists()


def test_F1_evaluation_transforms_of_the_checkpoint_are_applied(trained, tmp_path) -> None:
    overrides, exp = trained
    image = next((data_root(overrides) / "test").rglob("*.png"))
    payload = load_checkpoint(exp / "best.pt")
    crop = {
        "_target_": "torchvision.transforms.v2.Compose",
        "_convert_": "all",
        "transforms": [
            {"_target_": "torchvision.transforms.v2.CenterCrop", "size": 8},
            {"_target_": "torchvision.transforms.v2.Resize", "size": [16, 16]},
        ],
    }
    config = {**payload["config"], "augmentation": {"train": None, "eval": crop}}
    save_atomic({**payload, "config": config}, exp / "best.pt")
    tensor = Predictor.load(exp / "best.pt", device="cpu").load_image(image)
    from imgclf.data.cache import decode

    decoded = decode(str(image), 16)
    center = Image.fromarray(decoded[4:12, 4:12]).resize((16, 16), Image.Resampling.BILINEAR)
    assert tensor.shape == (3, 16, 16)
    assert np.abs(tensor.permute(1, 2, 0).numpy().astype(int) - np.asarray(center).astype(int)).max() <= 2


def test_predict_starts_without_hydra_plotting_or_training_libraries(trained, tmp_path) -> None:
    # torchvision and numba (batch augmentation) only load when the checkpoint's model needs them
    overrides, exp = trained
    image = next((data_root(overrides) / "test").rglob("*.png"))
    code = (
        "import sys; from imgclf.cli.predict import main; main(sys.argv[1:]); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'hydra', 'omegaconf', 'matplotlib', 'sklearn', 'tensorboard', 'numba', 'torchvision'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(image), "--checkpoint", str(exp / "best.pt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "plates").is_dir(), reason="../shared/data/plates is not there")
def test_plates_train_test_predict_and_leaderboard_as_a_user_runs_them(tmp_path) -> None:
    paths = [
        f"paths.experiments={tmp_path / 'experiments'}",
        f"paths.runs={tmp_path / 'runs'}",
        f"paths.cache={tmp_path / 'cache'}",
        "epochs=3",
        "progress=false",
    ]
    assert run_cli("train.py", "-cn=plates_tinyvgg", *paths).returncode == 0
    done = run_cli("test.py", "-cn=plates_tinyvgg", *paths)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "experiments" / "plates_tinyvgg" / "test" / "report.md").is_file()
    done = run_cli(
        "predict.py",
        str(SHARED_DATA / "plates" / "train"),
        "--experiment",
        "plates_tinyvgg",
        "--experiments-dir",
        str(tmp_path / "experiments"),
        "--output",
        str(tmp_path / "p.csv"),
    )
    assert done.returncode == 0, done.stderr
    rows = read_csv(tmp_path / "p.csv")
    assert len(rows) == len(list((SHARED_DATA / "plates" / "train").rglob("*.jpg")))
    assert {r["pred"] for r in rows} <= {"cleaned", "dirty"}
    done = subprocess.run(
        [sys.executable, "-m", "imgclf.leaderboard", "--experiments", str(tmp_path / "experiments")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "plates_tinyvgg" in (tmp_path / "experiments" / "leaderboard.md").read_text()


def test_flip_tta_equals_the_mean_over_the_image_and_its_mirror_file(trained, tmp_path: Path) -> None:
    overrides, exp = trained
    image = next((data_root(overrides) / "test").rglob("*.png"))
    with Image.open(image) as img:
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "mirror.png")
    plain = Predictor.load(exp / "best.pt", device="cpu")
    tta = Predictor.load(exp / "best.pt", device="cpu", tta="flip")
    p, p_mirror = (plain.probabilities([plain.load_image(f)])[0] for f in (image, tmp_path / "mirror.png"))
    torch.testing.assert_close(tta.probabilities([tta.load_image(image)])[0], (p + p_mirror) / 2)
    assert not torch.allclose(p, p_mirror)  # the check above means something
    out = tmp_path / "tta.json"
    assert (
        predict.main(
            [str(image), "--checkpoint", str(exp / "best.pt"), "--tta", "flip", "--device", "cpu", "--output", str(out)]
        )
        == 0
    )
    record = json.loads(out.read_text())["predictions"][0]
    assert record["confidence"] == pytest.approx(float(((p + p_mirror) / 2).max()), abs=1e-5)


def test_A8_predict_refuses_an_image_over_its_pixel_limit_from_the_header(trained, tmp_path, capsys) -> None:
    overrides, exp = trained
    small = next((data_root(overrides) / "test").rglob("*.png"))
    big, cut, bomb = tmp_path / "big.png", tmp_path / "cut.png", tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(big)  # 81 megapixels in ~10 KB: under Pillow's limit, over predict's
    cut.write_bytes(big.read_bytes()[:200])  # the header alone: refused before any pixel data is read
    Image.new("1", (9500, 9500)).save(bomb)  # 90 megapixels: Pillow's decompression-bomb warning
    assert big.stat().st_size < 100_000

    code, out, err = run_predict(
        capsys, big, small, cut, "--checkpoint", exp / "best.pt", "--output", tmp_path / "p.csv"
    )
    assert code == 1, "a refused file makes the exit status non-zero"
    rows = {Path(r["path"]).name: r for r in read_csv(tmp_path / "p.csv")}
    assert rows[small.name]["error"] == "" and rows[small.name]["pred"] in CLASSES
    for name in ("big.png", "cut.png"):
        assert rows[name]["pred"] == ""
        assert "9000x9000 pixels is 81.0 megapixels, over the limit of 40000000 pixels" in rows[name]["error"]
        assert "--max-pixels" in rows[name]["error"]
    assert "big.png" in out and "2 could not be read" in err

    # the option moves the limit; at its highest, Pillow's own warning is an error too
    code, out, err = run_predict(
        capsys, big, bomb, "--checkpoint", exp / "best.pt", "--max-pixels", "89478485", "--output", tmp_path / "q.csv"
    )
    rows = {Path(r["path"]).name: r for r in read_csv(tmp_path / "q.csv")}
    assert code == 1 and rows["big.png"]["error"] == "" and rows["big.png"]["pred"] in CLASSES
    assert "decompression bomb" in rows["bomb.png"]["error"]
    with pytest.raises(SystemExit):
        predict.parse_args([str(small), "--experiment", "x", "--max-pixels", "100000000"])
