"""Issue 27, ordinary inputs to predict.py and the other command-line programs: a reader that closes the
pipe early (J6), class names that could be indices (J16), and `~` in paths and Hydra overrides (J17)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import imgclf.tasks as tasks
from helpers import CONF, ROOT, compose_cfg, copy_trained, read_csv, run_cli, tiny_overrides
from imgclf.cli import doctor, export, leaderboard, predict, serve
from imgclf.cli.exits import tilde_hint
from imgclf.experiment.checkpoint import load_checkpoint, save_atomic

PIPE_BUFFER = 64 * 1024  # Linux's default pipe capacity


@pytest.fixture
def trained(trained_tiny: tuple[list[str], Path], tmp_path: Path) -> tuple[list[str], Path]:
    return copy_trained(trained_tiny, tmp_path)


def data_root(overrides: list[str]) -> Path:
    return Path(next(o for o in overrides if o.startswith("dataset.root=")).split("=", 1)[1])


@pytest.mark.slow
def test_J6_closed_stdout_keeps_the_output_file_whole_and_exits_like_unix_tools(trained, tmp_path) -> None:
    overrides, exp = trained
    image = next((data_root(overrides) / "test").rglob("*.png"))
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(600):  # long names: a table of ~600 * 200 bytes, well over a pipe's buffer
        shutil.copy(image, folder / f"{i:04d}_{'a_long_file_name_' * 10}.png")
    out = tmp_path / "p.csv"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "predict.py"),
            str(folder),
            "--checkpoint",
            str(exp / "best.pt"),
            "--output",
            str(out),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().startswith("file ")  # the table's header: then the reader leaves, as head does
    proc.stdout.close()
    err = proc.stderr.read()
    code = proc.wait(timeout=300)

    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err
    assert code == 141, err  # 128 + SIGPIPE: what the shell reports for cat or grep in the same place
    rows = read_csv(out)
    assert len(rows) == 600 and all(r["error"] == "" and r["pred"] for r in rows)
    assert sum(len(r["path"]) for r in rows) > PIPE_BUFFER  # the table did not fit in the pipe
    assert f"wrote {out}" in err and "600 image(s) classified" in err


def numeric_classes(exp: Path, tmp_path: Path) -> Path:
    """The trained checkpoint with class folders named 1, 10, 2 (sorted as text: index 1 is class 10)."""
    payload = load_checkpoint(exp / "best.pt")
    save_atomic({**payload, "class_names": ["1", "10", "2"], "display_names": {}}, tmp_path / "numeric.pt")
    return tmp_path / "numeric.pt"


def predicted_names(capsys, image: Path, checkpoint: Path, names: Path, *extra: str) -> tuple[int, dict, str]:
    """predict.py's exit status, its JSON record of ``image`` (class -> shown name of each top-k entry), stderr."""
    out = checkpoint.parent / "p.json"
    out.unlink(missing_ok=True)
    code = predict.main(
        [str(image), "--checkpoint", str(checkpoint), "--category-names", str(names), "--output", str(out), *extra]
    )
    err = capsys.readouterr().err
    if code != 0:
        return code, {}, err
    record = json.loads(out.read_text())["predictions"][0]
    return code, {t["class"]: t["name"] for t in record["top_k"]}, err


def closed_at_once(*command: str) -> tuple[int, str]:
    """Run ``command`` with a stdout its reader closed before anything was printed (``| head -n 0``)."""
    proc = subprocess.Popen(
        [sys.executable, *command], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    proc.stdout.close()
    err = proc.stderr.read()
    return proc.wait(timeout=300), err


@pytest.mark.slow
def test_J6_doctor_and_leaderboard_write_their_files_and_exit_like_unix_tools_when_stdout_closes(
    trained, tiny_folder: Path, tmp_path: Path
) -> None:
    code, err = closed_at_once("-m", "imgclf.cli.doctor", str(tiny_folder), "--json", str(tmp_path / "r.json"))
    assert code == 141 and "Traceback" not in err, err
    assert json.loads((tmp_path / "r.json").read_text())["blocking"] == []  # written before the table
    _, exp = trained
    code, err = closed_at_once("-m", "imgclf.cli.leaderboard", "--experiments-dir", str(exp.parent))
    assert code == 141 and "Traceback" not in err, err
    assert (exp.parent / "leaderboard.md").is_file() and (exp.parent / "leaderboard.csv").is_file()


def test_J16_category_names_that_read_as_names_and_as_indices_are_refused_until_chosen(
    trained, tmp_path, capsys
) -> None:
    overrides, exp = trained
    image = next((data_root(overrides) / "test").rglob("*.png"))
    checkpoint = numeric_classes(exp, tmp_path)
    by_index = tmp_path / "by_index.json"  # written for the class list: 0 -> "1", 1 -> "10", 2 -> "2"
    by_index.write_text(json.dumps({"0": "one", "1": "ten", "2": "two"}))

    code, _, err = predicted_names(capsys, image, checkpoint, by_index)
    assert code == 2, "two readings that give different names: neither is guessed"
    assert f"--category-names {by_index}: its keys are class names and class indices at once" in err
    assert "key '1' is class '1' by name, class '10' by index" in err and "--category-keys index" in err

    code, shown, _ = predicted_names(capsys, image, checkpoint, by_index, "--category-keys", "index")
    assert code == 0 and shown == {"1": "one", "10": "ten", "2": "two"}
    code, shown, err = predicted_names(capsys, image, checkpoint, by_index, "--category-keys", "name")
    assert code == 0 and shown == {"1": "ten", "10": "10", "2": "two"} and "no name for 1 class(es) (10)" in err


def test_J16_unambiguous_category_names_need_no_choice(trained, tmp_path, capsys) -> None:
    overrides, exp = trained
    image = next((data_root(overrides) / "test").rglob("*.png"))
    checkpoint = numeric_classes(exp, tmp_path)
    by_name = tmp_path / "by_name.json"  # every class folder named: key 10 is no index of 3 classes
    by_name.write_text(json.dumps({"1": "one", "10": "ten", "2": "two"}))
    assert predicted_names(capsys, image, checkpoint, by_name)[:2] == (0, {"1": "one", "10": "ten", "2": "two"})
    with pytest.raises(SystemExit):  # an unknown reading is argparse's error
        predict.main([str(image), "--checkpoint", str(checkpoint), "--category-keys", "position"])
    assert "invalid choice: 'position'" in capsys.readouterr().err
    bad_index = tmp_path / "bad_index.json"
    bad_index.write_text(json.dumps({"0": "one", "3": "four"}))
    code, _, err = predicted_names(capsys, image, checkpoint, bad_index, "--category-keys", "index")
    assert code == 2 and "read by index, but the keys ['3'] are not class indices 0..2" in err


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME is ``tmp_path/home`` and the working directory ``tmp_path``: a path left unexpanded would make
    ``tmp_path/~``."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def test_J17_quoted_tilde_in_predict_paths_is_expanded(trained, home, tmp_path, capsys) -> None:
    overrides, exp = trained
    (home / "photos").mkdir()
    image = next((data_root(overrides) / "test").rglob("*.png"))
    shutil.copy(image, home / "photos" / "a.png")
    shutil.copy(exp / "best.pt", home / "best.pt")
    (home / "names.json").write_text(json.dumps({"circle": "Round", "square": "Box", "stripes": "Lines"}))

    code = predict.main(
        [
            "~/photos/a.png",
            "~/photos/*.png",
            "--checkpoint",
            "~/best.pt",
            "--category-names",
            "~/names.json",
            "--output",
            "~/p.csv",
            "--plot",
            "~/p.png",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    rows = read_csv(home / "p.csv")
    assert [r["path"] for r in rows] == [str(home / "photos" / "a.png")]  # the pattern's match counted once
    assert rows[0]["name"] in ("Round", "Box", "Lines") and (home / "p.png").is_file()
    assert (
        predict.main(
            [
                "~/photos",
                "--experiment",
                "tiny",
                "--experiments-dir",
                str(exp.parent).replace(str(tmp_path), "~/..", 1),
                "--output",
                "~/q.csv",
            ]
        )
        == 0
    )
    assert len(read_csv(home / "q.csv")) == 1
    assert not (tmp_path / "~").exists()


def test_J17_path_options_of_the_other_programs_expand_tilde(trained, home, tmp_path, capsys) -> None:
    _, exp = trained
    args = export.parse_args(["--checkpoint", "~/best.pt", "--output", "~/out", "--experiments", "~/e"])
    assert (args.checkpoint, args.output, args.experiments_dir) == (home / "best.pt", home / "out", home / "e")
    args = serve.parse_args(["--model", "~/model.onnx", "--experiments", "~/e"])
    assert (args.model, args.experiments_dir) == (home / "model.onnx", home / "e")
    args = doctor.parse_args(["~/data", "--json", "~/r.json", "--cache", "~/c", "--config-dir", "~/conf"])
    assert (args.path, args.json, args.cache, args.config_dir) == (
        home / "data",
        home / "r.json",
        home / "c",
        home / "conf",
    )
    assert doctor.parse_args(["-cn", "train", "~dataset.display_names"]).overrides == ["~dataset.display_names"]

    shutil.copytree(exp.parent, home / "experiments")
    assert leaderboard.main(["--experiments", "~/experiments"]) == 0
    assert (home / "experiments" / "leaderboard.md").is_file() and not (tmp_path / "~").exists()
    capsys.readouterr()


@pytest.mark.slow
def test_J17_unquoted_tilde_in_an_override_gets_a_hint_to_quote_it(capsys) -> None:
    for script in ("train.py", "test.py"):
        result = run_cli(script, "dataset.root=~/photos")
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "LexerNoViableAltException: dataset.root=~/photos" in result.stderr  # Hydra's own message, then:
        assert "hint: Hydra's override grammar takes no unquoted ~ (dataset.root=~/photos)" in result.stderr
        assert "dataset.root=$HOME/photos" in result.stderr and "\"dataset.root='~/photos'\"" in result.stderr
    assert tilde_hint(["dataset.root=[", "~dataset.display_names", "-cn=~x"]) == ""  # other errors, Hydra's delete

    assert doctor.main(["-cn", "train", "paths.cache=~bob/a b"]) == 1
    err = capsys.readouterr().err
    assert (
        "Traceback" not in err
        and "quote the value for Hydra inside the shell's quotes: \"paths.cache='~bob/a b'\"" in err
    )


def test_J17_quoted_tilde_in_dataset_and_paths_overrides_is_expanded(tiny_folder, home, tmp_path) -> None:
    shutil.copytree(tiny_folder, home / "data")
    overrides = [
        o for o in tiny_overrides(tmp_path, tiny_folder, "epochs=1") if not o.startswith(("dataset.root=", "paths."))
    ]
    overrides += ["dataset.root='~/data'", "paths.experiments='~/exps'", "paths.runs='~/runs'", "paths.cache='~/cache'"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):  # the folder Hydra makes for the run
        hydra_cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    assert OmegaConf.select(hydra_cfg, "hydra.run.dir") == str(home / "exps" / "tiny")

    tasks.train(compose_cfg("train", overrides))
    assert (home / "exps" / "tiny" / "best.pt").is_file() and any((home / "runs" / "tiny").iterdir())
    assert any((home / "cache").iterdir()) and not (tmp_path / "~").exists()
