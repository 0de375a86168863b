"""docs/reliability.md, items C, D, E1 and F with the real fault injected: a GPU checkpoint on this CPU-only machine,
$TMPDIR on another file system, a second process on one experiment, a SIGKILL, a second Ctrl-C while saving,
an environment that turns weights_only off. Items A and B live beside their siblings (test_data, test_cli, ...)."""

from __future__ import annotations

import ast
import io
import os
import pickletools
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import imgclf.tasks as tasks
from helpers import CLASSES, ROOT, compose_cfg, copy_trained, read_csv, tiny_overrides
from imgclf.atomic import write_atomic, write_text_atomic
from imgclf.cli import predict
from imgclf.data.cache import decode
from imgclf.errors import CheckpointError, DataError, ExperimentError
from imgclf.experiment.checkpoint import load_checkpoint, save_atomic
from imgclf.experiment.folder import ExperimentDir, read_pid
from imgclf.experiment.run_log import read_metrics
from imgclf.inference import Predictor
from imgclf.training.state import Interrupted

CPU_ONLY = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="needs a machine without CUDA: the fault is a GPU checkpoint read where there is none",
)


def read_tensorboard(folder: Path) -> dict[str, list[int]]:
    """The steps of every scalar tag in the event files of ``folder`` (purged steps left out, as TensorBoard does)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def wait_for(condition, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def start_training(tmp_path: Path, tiny_folder: Path, *extra: str) -> subprocess.Popen:
    """``python train.py`` of a run too long to finish, as a user starts it."""
    args = [*tiny_overrides(tmp_path, tiny_folder), "epochs=400", *extra]
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def epochs_logged(exp: Path) -> int:
    metrics = exp / "metrics.jsonl"
    return metrics.read_text().count("\n") if metrics.exists() else 0


# --- C2: temp files beside their target ------------------------------------------------------------------------


def elsewhere(tmp_path: Path) -> Path:
    """A folder for $TMPDIR, on another file system than ``tmp_path`` when the machine has one (/dev/shm): a temp
    file staged there cannot be renamed into place (EXDEV), as on a machine whose /tmp is a tmpfs."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev:
        return Path(tempfile.mkdtemp(dir=shm, prefix="imgclf-test-"))
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    return folder


def test_C2_temp_files_are_staged_beside_their_target_never_in_tmpdir(tmp_path: Path, monkeypatch) -> None:
    tmpdir = elsewhere(tmp_path)
    try:
        monkeypatch.setenv("TMPDIR", str(tmpdir))
        monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile reads $TMPDIR again
        assert tempfile.gettempdir() == str(tmpdir)  # a temp file made without dir= would land there
        target = tmp_path / "exp" / "metrics.json"
        seen: list[tuple[list[str], list[str]]] = []

        def slow_write(f) -> None:  # look at both folders while the file is half written
            f.write(b'{"half": ')
            seen.append((sorted(p.name for p in target.parent.iterdir()), sorted(p.name for p in tmpdir.iterdir())))
            f.write(b"1}")

        write_atomic(target, slow_write)
        ((in_target, in_tmpdir),) = seen
        assert len(in_target) == 1 and in_target[0].startswith(".tmp-metrics.json.") and in_tmpdir == []
        assert target.read_text() == '{"half": 1}'

        renamed: list[tuple[str, str]] = []
        real_replace = os.replace

        def replace(src, dst) -> None:
            renamed.append((str(src), str(dst)))
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        save_atomic({"model": {"w": torch.ones(3)}}, tmp_path / "exp" / "best.pt")
        write_text_atomic(tmp_path / "exp" / "config.yaml", "seed: 1\n")
        assert [Path(dst).name for _, dst in renamed] == ["best.pt", "config.yaml"]
        assert all(Path(src).parent == Path(dst).parent for src, dst in renamed), renamed
        assert list(tmpdir.iterdir()) == []
        assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["best.pt", "config.yaml", "metrics.json"]
    finally:
        if tmpdir.parent != tmp_path:
            shutil.rmtree(tmpdir, ignore_errors=True)


# --- C6: the new best is on disk before last.pt moves on --------------------------------------------------------


def test_C6_a_best_pt_that_cannot_be_written_leaves_last_pt_where_it_was(tmp_path: Path) -> None:
    from imgclf.experiment.writer import CheckpointWriter
    from imgclf.training.scheduler import Scheduler
    from imgclf.training.state import TrainState

    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    exp = ExperimentDir(tmp_path / "exp", tmp_path / "runs")
    writer = CheckpointWriter(exp, model, optimizer, Scheduler(optimizer, None), {"class_names": list(CLASSES)})
    writer.save(TrainState(epoch=1), best=True)
    before = exp.last.read_bytes()
    exp.best.unlink()  # a real rename failure: best.pt is now a folder that holds a file (EISDIR / ENOTEMPTY)
    exp.best.mkdir()
    (exp.best / "x").write_text("x")
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(CheckpointError, match="best.pt"):
        writer.save(TrainState(epoch=2), best=True)
    assert exp.last.read_bytes() == before  # last.pt did not move past a best that is not on disk
    assert load_checkpoint(exp.last)["state"]["epoch"] == 1


# --- C8: a second process on the same experiment ----------------------------------------------------------------


@pytest.mark.slow
def test_C8_a_second_run_of_a_running_experiment_is_refused_naming_the_process(
    tmp_path: Path, tiny_folder: Path
) -> None:
    exp = tmp_path / "experiments" / "tiny"
    proc = start_training(tmp_path, tiny_folder)
    try:
        # the run holds the lock once its pid is in it (or, were there no lock, once it trains)
        wait_for(lambda: read_pid(exp / ".lock") == proc.pid or epochs_logged(exp) >= 1 or proc.poll() is not None)
        assert proc.poll() is None, proc.stdout.read()
        with pytest.raises(ExperimentError, match=f"in use by process {proc.pid}"):
            tasks.train(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "epochs=2")))
        with pytest.raises(ExperimentError, match=f"in use by process {proc.pid}"):
            tasks.train(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "epochs=2", "overwrite=true")))
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, output[-2000:]
    assert not (exp / ".lock").exists()  # released by the run that held it
    assert load_checkpoint(exp / "last.pt")["class_names"] == list(CLASSES)  # written on SIGTERM, by the holder


# --- C9: metrics survive a SIGKILL --------------------------------------------------------------------------------


@pytest.mark.slow
def test_C9_a_killed_run_keeps_its_logged_epochs_in_tensorboard_and_resumes_one_curve(
    tmp_path: Path, tiny_folder: Path
) -> None:
    exp, runs = tmp_path / "experiments" / "tiny", tmp_path / "runs" / "tiny"
    proc = start_training(tmp_path, tiny_folder, "report.figures=false")  # no figure flushes: only the epoch's own
    wait_for(lambda: epochs_logged(exp) >= 3 or proc.poll() is not None)
    proc.kill()  # SIGKILL: no handler, no close(), no atexit
    proc.communicate(timeout=60)
    logged = [r["epoch"] for r in read_metrics(exp / "metrics.jsonl")]
    assert logged == list(range(1, len(logged) + 1)) and len(logged) >= 3
    text = (exp / "metrics.jsonl").read_text()
    assert text.endswith("\n") and text.count("\n") == len(logged)  # whole lines only: none left half in a buffer
    curve = read_tensorboard(runs)["val/acc"]
    assert set(range(1, len(logged))) <= set(curve), (logged, curve)  # the kill may land inside the last epoch's write
    saved = load_checkpoint(exp / "last.pt")["state"]["epoch"]
    assert saved <= len(logged)  # each epoch is logged before its checkpoint: none is only in a lost buffer

    tasks.train(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, f"epochs={saved + 1}")))
    assert [r["epoch"] for r in read_metrics(exp / "metrics.jsonl")] == list(range(1, saved + 2))
    assert read_tensorboard(runs)["val/acc"] == list(range(1, saved + 2))  # one point per epoch: no zig-zag


@pytest.mark.slow
def test_C9_epochs_logged_after_the_last_checkpoint_of_a_crashed_run_are_replaced_not_repeated(
    tmp_path: Path, tiny_folder: Path
) -> None:
    from test_checkpoint import run_with_file_size_limit

    exp, runs = tmp_path / "experiments" / "tiny", tmp_path / "runs" / "tiny"
    overrides = tiny_overrides(tmp_path, tiny_folder, "epochs=1", "report.figures=false")
    tasks.train(compose_cfg("train", overrides))
    # epoch 2 under a real 300 kB file size limit: its metrics are logged, then its checkpoint cannot be written
    train = "import runpy; runpy.run_path('train.py', run_name='__main__')"
    done = run_with_file_size_limit(300_000, train, "train.py", *overrides, "epochs=3", cwd=ROOT)
    assert done.returncode == 1 and "could not write checkpoint" in done.stdout + done.stderr
    assert load_checkpoint(exp / "last.pt")["state"]["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(exp / "metrics.jsonl")] == [1, 2]  # epoch 2 survived the crash
    assert read_tensorboard(runs)["val/acc"] == [1, 2]

    tasks.train(compose_cfg("train", [*overrides, "epochs=3"]))  # resumes from epoch 1: epoch 2 runs again
    assert [r["epoch"] for r in read_metrics(exp / "metrics.jsonl")] == [1, 2, 3]
    assert read_tensorboard(runs)["val/acc"] == [1, 2, 3]  # the first epoch 2 is purged: no zig-zag


# --- D2: a checkpoint saved on a GPU ------------------------------------------------------------------------------


def on_gpu(source: Path, target: Path, device: str = "cuda:0") -> int:
    """Copy the torch.save zip ``source`` to ``target`` with every tensor storage tagged ``device``, as torch.save
    writes it on a GPU machine; the zip is written anew, so its CRCs are right. Returns the storages retagged."""
    with zipfile.ZipFile(source) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    retagged = 0
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members:
            if name.endswith("/data.pkl"):
                data, retagged = _retag(data, device)
            archive.writestr(name, data)
    target.write_bytes(buffer.getvalue())
    return retagged


def _retag(pickle: bytes, device: str) -> tuple[bytes, int]:
    """Replace the location 'cpu' of each storage's persistent id ('storage', type, key, location, numel); later
    storages refer to the memoized string, so this is usually one string."""
    pieces, start, count, strings = [], 0, 0, []
    for op, arg, pos in pickletools.genops(pickle):
        if op.name == "GLOBAL" and strings[-1:] == ["storage"]:
            strings.append("<type>")
            continue
        if op.name in ("BINUNICODE", "SHORT_BINUNICODE"):
            if arg == "cpu" and strings[-3:-1] == ["storage", "<type>"]:  # after 'storage', the type and the key
                encoded = device.encode()
                pieces += [pickle[start:pos], b"X" + len(encoded).to_bytes(4, "little") + encoded]
                start = pos + (5 if op.name == "BINUNICODE" else 2) + len(arg)
                count += 1
            strings.append(arg)
    return b"".join(pieces) + pickle[start:], count


@CPU_ONLY
def test_D2_a_checkpoint_saved_on_a_gpu_loads_in_test_and_predict_on_a_cpu_only_machine(
    trained_tiny, tmp_path: Path, capsys
) -> None:
    overrides, exp = copy_trained(trained_tiny, tmp_path, "report.bootstrap=0")
    gpu = tmp_path / "from_a_gpu" / "best.pt"
    gpu.parent.mkdir()
    assert on_gpu(exp / "best.pt", gpu) >= 1
    with pytest.raises(RuntimeError, match="CUDA device but torch.cuda.is_available"):  # the fault is real
        torch.load(gpu, weights_only=True)
    assert zipfile.ZipFile(gpu).testzip() is None  # a sound file: only its device tags differ

    original, loaded = load_checkpoint(exp / "best.pt"), load_checkpoint(gpu)
    assert loaded["class_names"] == list(CLASSES) and loaded["state"] == original["state"]
    for name, tensor in original["model"].items():
        assert loaded["model"][name].device.type == "cpu" and torch.equal(loaded["model"][name], tensor), name

    image = next((Path(tiny_folder_of(overrides)) / "test").rglob("*.png"))
    cpu_model, gpu_model = Predictor.load(exp / "best.pt", device="cpu"), Predictor.load(gpu, device="auto")
    assert gpu_model.device.type == "cpu"
    torch.testing.assert_close(
        gpu_model.probabilities([gpu_model.load_image(image)]), cpu_model.probabilities([cpu_model.load_image(image)])
    )
    assert predict.main([str(image), "--checkpoint", str(gpu), "--output", str(tmp_path / "p.csv")]) == 0
    (row,) = read_csv(tmp_path / "p.csv")
    assert row["error"] == "" and row["pred"] in CLASSES

    metrics = tasks.test(compose_cfg("train", [*overrides, f"ckpt={gpu}"]))
    assert metrics["samples"] == 18 and metrics["checkpoint"] == str(gpu.resolve())


def tiny_folder_of(overrides: list[str]) -> str:
    return next(o for o in overrides if o.startswith("dataset.root=")).split("=", 1)[1]


# --- D3: a checkpoint that does not fit the model built from the config -----------------------------------------


def test_D3_a_model_config_the_checkpoint_does_not_fit_is_explained_not_loaded_partly(
    trained_tiny, tmp_path: Path
) -> None:
    overrides, exp = copy_trained(trained_tiny, tmp_path, "report.bootstrap=0")
    # other layer names entirely: strict=False would load nothing and evaluate a random network
    with pytest.raises(CheckpointError) as info:
        tasks.test(compose_cfg("train", [*overrides, "model=small_resnet"]))
    message = str(info.value)
    assert "3 classes ['circle', 'square', 'stripes']" in message and "imgclf.models.small_cnn.SmallCNN" in message
    assert "Use the config the checkpoint was trained with" in message
    assert not (exp / "test").exists()  # no report of a model that was never loaded

    payload = load_checkpoint(exp / "best.pt")  # predict: the config inside names another width than the weights
    model = {**payload["config"]["model"], "width": 2 * payload["config"]["model"]["width"]}
    save_atomic({**payload, "config": {**payload["config"], "model": model}}, tmp_path / "wider.pt")
    with pytest.raises(CheckpointError, match=r"wider.pt: the weights do not fit SmallCNN"):
        Predictor.load(tmp_path / "wider.pt", device="cpu")


# --- D4: everything a run writes loads with weights_only=True ----------------------------------------------------


def test_D4_every_checkpoint_a_run_writes_holds_only_what_weights_only_loads(tmp_path: Path, tiny_folder: Path) -> None:
    features = (
        "trainer.ema_decay=0.8",
        "imbalance=weighted_sampler",
        "batch_mix=mixup",
        "augmentation=flip",
        "dataset.normalize=auto",
        "calibrate=true",
        "trainer.early_stopping.patience=5",
        "epochs=2",
    )
    tasks.train(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, *features)))
    written = sorted((tmp_path / "experiments").rglob("*.pt"))
    assert {p.name for p in written} == {"best.pt", "last.pt"}
    assert "temperature" in load_checkpoint(written[0])  # calibrate=true wrote into best.pt too
    for path in written:
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == [], path
        payload = torch.load(path, weights_only=True)  # no map_location: nothing but CPU tensors either
        assert isinstance(payload["config"], dict) and payload["class_names"] == list(CLASSES)


# --- E1: a second Ctrl-C while the last checkpoint is written ----------------------------------------------------


def test_E1_ctrl_c_again_while_saving_is_ignored_and_the_run_stops_with_130(
    tmp_path: Path, tiny_folder: Path, monkeypatch, caplog
) -> None:
    import imgclf.experiment.writer as writer

    real_save = writer.save_atomic

    def ctrl_c_during_save(payload, path) -> None:  # a real SIGINT to this process at the start of every save
        os.kill(os.getpid(), signal.SIGINT)
        real_save(payload, path)

    monkeypatch.setattr(writer, "save_atomic", ctrl_c_during_save)
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(Interrupted) as info:
            tasks.train(compose_cfg("train", tiny_overrides(tmp_path, tiny_folder, "epochs=3")))
    except KeyboardInterrupt:
        pytest.fail("a Ctrl-C during the save interrupted it")
    assert info.value.exit_code == 130
    assert "received SIGINT again: still saving" in caplog.text
    state = load_checkpoint(tmp_path / "experiments" / "tiny" / "last.pt")["state"]
    assert (state["epoch"], state["step"]) == (1, 1)  # stopped at the first step boundary after epoch 1's save
    assert signal.getsignal(signal.SIGINT) is previous  # Ctrl-C works as usual again


# --- F2: untrusted checkpoints -------------------------------------------------------------------------------------


class RunsCode:
    """Unpickled without weights_only, this creates ``marker``: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_F2_a_checkpoint_runs_no_code_even_when_the_environment_turns_weights_only_off(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(2)}, "class_names": ["a", "b"], "hook": RunsCode(marker)}, evil)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # flips torch.load's default to unpickle anything
    with pytest.warns(UserWarning):
        torch.load(evil)
    assert marker.exists(), "the environment variable did not take effect: this test would prove nothing"
    marker.unlink()

    with pytest.raises(CheckpointError, match=rf"{evil.name} .* cannot be read: UnpicklingError"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError):
        Predictor.load(evil, device="cpu")
    image = tmp_path / "x.png"
    Image.new("RGB", (16, 16)).save(image)
    assert predict.main([str(image), "--checkpoint", str(evil)]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert not marker.exists()


def test_F2_every_torch_load_in_the_package_passes_weights_only_true() -> None:
    calls = []
    for path in sorted((ROOT / "src" / "imgclf").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                weights_only = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
                calls.append((path.name, node.lineno, isinstance(weights_only, ast.Constant) and weights_only.value))
    assert calls and all(explicit is True for _, _, explicit in calls), calls


# --- F3: what an upload endpoint gets: bytes, and a name it must not use ----------------------------------------


def test_F3_uploaded_bytes_are_decoded_in_memory_under_the_pixel_limit(trained_tiny) -> None:
    _, exp = trained_tiny
    predictor = Predictor.load(exp / "best.pt", device="cpu")
    image = next((Path(tiny_folder_of(trained_tiny[0])) / "test").rglob("*.png"))
    client_name = "../../../etc/passwd.png"  # a client's file name: named in messages, never opened
    tensor = predictor.load_image(client_name, data=image.read_bytes())
    assert torch.equal(tensor, torch.from_numpy(decode(str(image), predictor.image_size)).permute(2, 0, 1))
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, format="PNG")  # 81 megapixels in ~10 KB
    with pytest.raises(DataError, match=r"passwd.png: 9000x9000 pixels is 81.0 megapixels, over the limit"):
        predictor.load_image(client_name, data=buffer.getvalue())
