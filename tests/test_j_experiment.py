"""docs/reliability.md J1 and J3: the experiment a run writes, and what it deletes, is its own.

J1: an experiment name that is not one folder name (``..``, an empty ``$EXP``, ``a/b``, ``../x``) is refused before
any folder is made, and ``overwrite=true`` deletes nothing outside ``experiments/<name>/`` and ``runs/<name>/``, links
resolved. J3: a finished or resumable experiment trained on another ``dataset.root`` is neither "nothing to do" nor
continued: the run stops, naming both folders and the commands to use.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import imgclf.tasks as tasks
from helpers import StopAfter, compose_cfg, make_folder, run_cli, tiny_overrides
from imgclf.cli import predict
from imgclf.cli.experiments import best_checkpoint
from imgclf.errors import ConfigError, ExperimentError
from imgclf.experiment.checkpoint import load_checkpoint
from imgclf.experiment.folder import ExperimentDir
from imgclf.training.state import Interrupted

BAD_NAMES = ["..", "", "a/b", "../x", "."]


def sentinel_tree(root: Path) -> dict[str, bytes]:
    """A project around ``root/experiments`` and ``root/runs``: sources beside them, an earlier experiment whose
    name starts with ``test`` and its TensorBoard run; every file and its content."""
    files = {
        "keep.py": b"source",
        "tests/test_keep.py": b"a test",
        "experiments/test_old/best.pt": b"weights",
        "experiments/test_old/test/metrics.json": b"{}",
        "runs/test_old/events.out": b"events",
        "runs/keep.txt": b"keep",
    }
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return snapshot(root)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", BAD_NAMES)
def test_J1_a_name_that_is_not_one_folder_is_refused_and_deletes_nothing(
    tmp_path: Path, tiny_folder: Path, name: str
) -> None:
    before = sentinel_tree(tmp_path)
    overrides = tiny_overrides(tmp_path, tiny_folder, f"experiment={name}", "overwrite=true", "epochs=1")
    cfg = compose_cfg("train", overrides)
    with pytest.raises(ConfigError, match=r"experiment='.*': .*one folder name under paths.experiments"):
        tasks.train(cfg)
    with pytest.raises(ConfigError, match=r"experiment='.*'"):
        tasks.test(cfg)
    assert snapshot(tmp_path) == before  # nothing deleted, nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiments", "keep.py", "runs", "tests"]


@pytest.mark.slow
def test_J1_train_py_refuses_a_bad_name_before_hydra_makes_a_folder(tmp_path: Path, tiny_folder: Path) -> None:
    before = sentinel_tree(tmp_path)
    done = run_cli(
        "train.py", *tiny_overrides(tmp_path, tiny_folder, "experiment=..", "overwrite=true"), cwd=tmp_path, timeout=120
    )
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert snapshot(tmp_path) == before  # no .hydra/ or train.log above experiments/, nothing deleted
    assert "ConfigError: experiment='..': " in done.stderr and "Traceback" not in done.stderr


def test_J1_overwrite_never_deletes_through_a_link_out_of_the_experiments_folder(
    tmp_path: Path, tiny_folder: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    for name in ("best.pt", "last.pt", "metrics.jsonl", "test/metrics.json", "notes.txt"):
        (elsewhere / name).parent.mkdir(parents=True, exist_ok=True)
        (elsewhere / name).write_text(name)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "linked").symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(elsewhere)
    cfg = compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "experiment=linked", "overwrite=true", "epochs=1"))
    with pytest.raises(ExperimentError, match=r"once its links are resolved: not a folder inside paths.experiments"):
        tasks.train(cfg)
    assert snapshot(elsewhere) == before


def test_J1_clear_keeps_to_its_own_two_folders(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "history").mkdir(parents=True)
    (outside / "history" / "epoch-0-step-0.yaml").write_text("kept")
    (outside / "events.out").write_text("kept")
    exp = ExperimentDir(
        tmp_path / "experiments" / "x",
        tmp_path / "runs" / "x",
        experiments=tmp_path / "experiments",
        runs=tmp_path / "runs",
    )
    exp.path.mkdir(parents=True)
    exp.best.write_text("weights")
    exp.tensorboard_dir.parent.mkdir()
    exp.tensorboard_dir.symlink_to(outside, target_is_directory=True)  # runs/x -> outside
    with pytest.raises(ExperimentError, match="not a folder inside paths.runs"):
        exp.clear()
    exp.tensorboard_dir.unlink()
    exp.config_history.symlink_to(outside / "history", target_is_directory=True)  # config_history -> outside
    with pytest.raises(ExperimentError, match="not a folder inside the experiment folder"):
        exp.clear()
    assert exp.best.exists() and snapshot(outside) == {"events.out": b"kept", "history/epoch-0-step-0.yaml": b"kept"}
    exp.config_history.unlink()
    exp.clear()  # its own folders: cleared
    assert not exp.best.exists() and outside.exists()


def test_J1_predict_export_and_serve_refuse_an_experiment_name_outside_the_folder(
    tmp_path: Path, tiny_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "best.pt").write_bytes(b"not read")  # experiments/../best.pt: what `--experiment ..` would load
    (tmp_path / "experiments").mkdir()
    for name in BAD_NAMES:
        with pytest.raises(ConfigError, match=r"--experiment '.*': "):
            best_checkpoint(tmp_path / "experiments", name, "--checkpoint FILE")  # predict's, export's and serve's
    image = next(tiny_folder.rglob("*.png"))
    code = predict.main(["--experiment", "..", "--experiments-dir", str(tmp_path / "experiments"), str(image)])
    assert code != 0 and "--experiment '..': " in capsys.readouterr().err


# --- J3 ------------------------------------------------------------------------------------------------------------


def test_J3_a_finished_experiment_is_not_done_for_another_folder(tmp_path: Path) -> None:
    photos = make_folder(tmp_path / "photos", {"train": 6, "val": 2, "test": 2})
    other = make_folder(tmp_path / "other", {"train": 6, "val": 2, "test": 2}, classes=("cat", "dog", "owl"), seed=3)
    tasks.train(compose_cfg("train", tiny_overrides(tmp_path, photos, "epochs=1")))
    best = tmp_path / "experiments" / "tiny" / "best.pt"
    stamp = best.read_bytes()
    copy = Path(shutil.copytree(photos, tmp_path / "photos_copy"))  # the same images at another path
    for root in (other, copy):
        with pytest.raises(ExperimentError) as refused:
            tasks.train(compose_cfg("train", tiny_overrides(tmp_path, root, "epochs=1")))
        message = str(refused.value)
        assert f"finished on other data (dataset.root: {photos.resolve()} -> {root.resolve()})" in message
        assert f"dataset.root={root} experiment=tiny_{root.name}" in message and "overwrite=true" in message
    assert best.read_bytes() == stamp  # not retrained, not called done
    tasks.train(compose_cfg("train", tiny_overrides(tmp_path, other, "epochs=1", "experiment=tiny_other")))
    assert load_checkpoint(tmp_path / "experiments" / "tiny_other" / "best.pt")["class_names"] == ["cat", "dog", "owl"]


def test_J3_a_resumable_experiment_whose_folder_moved_names_dataset_root(tmp_path: Path) -> None:
    photos = make_folder(tmp_path / "photos", {"train": 6, "val": 2, "test": 2})
    with pytest.raises(Interrupted):
        tasks.train(
            compose_cfg("train", tiny_overrides(tmp_path, photos, "epochs=2")), stop_signal=lambda: StopAfter(2)
        )
    moved = photos.rename(tmp_path / "moved")
    with pytest.raises(ExperimentError, match=r"was started on other data \(dataset.root: .*photos -> .*moved\)"):
        tasks.train(compose_cfg("train", tiny_overrides(tmp_path, moved, "epochs=2")))


@pytest.mark.slow
def test_J1_sweep_jobs_in_a_folder_outside_the_experiments_keep_a_tensorboard_folder_each(
    tmp_path: Path, tiny_folder: Path
) -> None:
    # hydra.sweep.dir elsewhere: every job wrote runs/<experiment> itself, so overwrite=true in one deleted all
    args = [a for a in tiny_overrides(tmp_path, tiny_folder) if not a.startswith("epochs")]
    done = run_cli(
        "train.py",
        "-m",
        *args,
        "epochs=1",
        "optimizer.lr=1e-3,1e-2",
        f"hydra.sweep.dir={tmp_path / 'elsewhere' / 'lr_sweep'}",
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    jobs = sorted(p.name for p in (tmp_path / "elsewhere" / "lr_sweep").iterdir() if p.name[0].isdigit())
    runs = tmp_path / "runs" / "tiny" / "lr_sweep"
    assert len(jobs) == 2 and sorted(p.name for p in runs.iterdir()) == jobs
    assert not list((tmp_path / "runs" / "tiny").glob("events.out.tfevents*"))  # none shared by the jobs
