"""Atomic writes survive kills; broken files give one clear error; RNG states round-trip."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from imgclf.errors import CheckpointError
from imgclf.experiment.checkpoint import load_checkpoint, remove_orphan_temps, rng_states, save_atomic, set_rng_states
from imgclf.training.state import is_better


def payload(value: float = 1.0) -> dict:
    return {"model": {"w": torch.full((4, 4), value)}, "state": {"epoch": 3}, "class_names": ["a", "b"]}


def test_C5_D4_roundtrip_loads_with_weights_only_and_normal_permissions(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    save_atomic(payload(2.0), path)
    assert (path.stat().st_mode & 0o777) == 0o644
    assert torch.load(path, weights_only=True, map_location="cpu")["class_names"] == ["a", "b"]
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((4, 4), 2.0))
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize(
    "content,cause",
    [
        (b"", "empty"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 10\n", "git-LFS"),
        (b"this is not a checkpoint at all", "cannot be read"),
    ],
)
def test_D1_C7_unreadable_files_raise_checkpoint_error_with_path(tmp_path: Path, content: bytes, cause: str) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=cause) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_D1_C7_truncated_checkpoint_raises_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_atomic(payload(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{path.name}.*bytes"):
        load_checkpoint(path)


def test_D1_missing_checkpoint_and_non_imgclf_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an imgclf checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_C7_nan_weights_in_a_checkpoint_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    bad = payload()
    bad["model"]["w"][1, 2] = float("nan")  # written so (a diverged run saved by other code): the checksums match
    save_atomic(bad, path)
    with pytest.raises(CheckpointError, match="non-finite values in 'w'"):
        load_checkpoint(path)


def _flip_bit_in_member(path: Path, suffix: str, offset: int = 0, bit: int = 0) -> str:
    """Flip one bit of a stored zip member's bytes in place, as a disk or copy error would; its name."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(suffix))
    data = bytearray(path.read_bytes())
    header = info.header_offset
    name_length, extra_length = (
        int.from_bytes(data[header + 26 : header + 28], "little"),
        int.from_bytes(data[header + 28 : header + 30], "little"),
    )
    data[header + 30 + name_length + extra_length + offset] ^= 1 << bit
    path.write_bytes(bytes(data))
    return info.filename


def test_C7_a_flipped_bit_that_keeps_the_weights_finite_is_caught_by_the_zip_checksum(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    save_atomic(payload(1.0), path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((4, 4), 1.0))  # intact: loads
    member = _flip_bit_in_member(path, "/data/0", offset=5, bit=3)  # 1.0 becomes another finite float
    raw = torch.load(path, weights_only=True, map_location="cpu")["model"]["w"]
    assert torch.isfinite(raw).all() and not torch.equal(raw, torch.full((4, 4), 1.0))  # torch alone: silent
    with pytest.raises(CheckpointError, match=rf"{path.name} \(\d+ bytes\) is damaged: its part '{member}'") as info:
        load_checkpoint(path)
    assert "another checkpoint" in str(info.value)


def test_C7_a_flipped_bit_in_the_pickle_is_a_clear_error_not_a_decode_error(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_atomic(payload(1.0), path)
    member = _flip_bit_in_member(path, "data.pkl", offset=40, bit=6)
    with pytest.raises(CheckpointError, match=f"is damaged: its part '{member}'"):
        load_checkpoint(path)


LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
sys.argv = sys.argv[2:]
"""


def run_with_file_size_limit(limit: int, code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run python ``code`` with ``args`` in a process that cannot write a file past ``limit`` bytes: a real
    disk-full (EFBIG) for every write, torch's included."""
    return subprocess.run(
        [sys.executable, "-c", LIMITED + code, str(limit), *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


SAVE_ONCE = """
import torch
from imgclf.errors import CheckpointError
from imgclf.experiment.checkpoint import save_atomic
try:
    save_atomic({"model": {"w": torch.full((100_000,), 9.0)}}, sys.argv[0])
except CheckpointError as exc:
    print("CheckpointError:", exc)
    raise SystemExit(1)
"""


@pytest.mark.slow
def test_C3_disk_full_during_a_save_keeps_the_previous_file_and_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_atomic(payload(1.0), path)
    done = run_with_file_size_limit(100_000, SAVE_ONCE, str(path))
    # torch alone says "RuntimeError: [enforce fail at inline_container.cc] unexpected pos"
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"could not write checkpoint {path}: File too large" in done.stdout
    assert "MiB free" in done.stdout and "the previous file is kept" in done.stdout
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((4, 4), 1.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left


def test_C3_disk_full_during_a_text_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text('{"old": 1}')
    code = "from imgclf.atomic import write_text_atomic\nwrite_text_atomic(sys.argv[0], 'x' * 10_000)"
    done = run_with_file_size_limit(1000, code, str(target))
    assert done.returncode != 0 and "File too large" in done.stderr
    assert target.read_text() == '{"old": 1}' and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_C1_orphans_of_a_killed_writer_are_removed_and_a_live_writers_temp_is_kept(tmp_path: Path) -> None:
    dead, alive = tmp_path / f".tmp-last.pt.{dead_pid()}.x1y2", tmp_path / f".tmp-best.pt.{os.getpid()}.a1b2"
    for tmp in (dead, alive):
        tmp.write_bytes(b"half a file")
    assert remove_orphan_temps(tmp_path) == [dead]
    assert alive.exists()


def test_C1_every_training_start_removes_orphan_temps_not_only_resume_auto(tmp_path: Path, tiny_folder: Path) -> None:
    import imgclf.tasks as tasks
    from helpers import compose_cfg, tiny_overrides

    overrides = tiny_overrides(tmp_path, tiny_folder, "epochs=1")
    tasks.train(compose_cfg("train", overrides))
    exp, pid = tmp_path / "experiments" / "tiny", dead_pid()
    orphans = [exp / f".tmp-last.pt.{pid}.k1ll", exp / "config_history" / f".tmp-epoch-1-step-3.yaml.{pid}.k1ll"]
    for orphan in orphans:
        orphan.write_bytes(b"half a file")
    tasks.train(compose_cfg("train", [*overrides, "resume=never", "overwrite=true"]))
    assert not any(orphan.exists() for orphan in orphans)


def test_C1_a_killed_cache_build_leaves_no_orphan_after_the_next_build(tmp_path: Path, tiny_folder: Path) -> None:
    from imgclf.data.cache import DecodeCache
    from imgclf.data.folder import walk_images

    paths = sorted(walk_images(tiny_folder / "val"))
    cache = DecodeCache(tmp_path / "cache", progress=False)
    cache.load(paths, 16)
    (array,) = (tmp_path / "cache").glob("*/images-16px-hwc.npy")
    orphan = array.with_name(f".tmp-images-16px-hwc.npy.{dead_pid()}.k1ll")
    orphan.write_bytes(b"half an array")
    array.unlink()  # the next load builds again, as after the kill
    cache.load(paths, 16)
    assert array.exists() and not orphan.exists()


def test_C1_orphan_temp_files_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".tmp-last.pt.abc").write_bytes(b"half a file")
    (tmp_path / "keep.pt").write_bytes(b"x")
    assert [p.name for p in remove_orphan_temps(tmp_path)] == [".tmp-last.pt.abc"]
    assert (tmp_path / "keep.pt").exists()


SAVER = """
import sys, torch
from imgclf.experiment.checkpoint import save_atomic
i = 0
while True:
    i += 1
    save_atomic({"model": {"w": torch.full((1024, 1024, 4), float(i))}, "i": i}, sys.argv[1])
    print(i, flush=True)
"""


@pytest.mark.slow
def test_C1_kill_during_repeated_saves_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    rng = random.Random(0)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one save finished
        time.sleep(rng.uniform(0.05, 0.4))  # then kill at a random point, most likely mid-save
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        loaded = load_checkpoint(path)
        assert torch.all(loaded["model"]["w"] == float(loaded["i"]))
    remove_orphan_temps(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_D5_rng_states_roundtrip_through_a_weights_only_file(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    save_atomic({"model": {}, "rng": rng_states()}, tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    set_rng_states(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_C6_nan_never_becomes_best() -> None:
    assert not is_better(float("nan"), None, "max")
    assert not is_better(float("nan"), 0.1, "min")
    assert is_better(0.5, None, "max") and is_better(0.6, 0.5, "max") and not is_better(0.4, 0.5, "max")
    assert is_better(0.4, 0.5, "min") and not is_better(float("inf"), 0.5, "max")


def test_C1_text_writes_are_atomic_and_leave_no_temp_on_failure(tmp_path: Path, monkeypatch) -> None:
    from imgclf.atomic import write_text_atomic

    target = tmp_path / "metrics.json"
    write_text_atomic(target, '{"old": 1}')

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomic(target, '{"new": 2}')
    monkeypatch.undo()
    assert target.read_text() == '{"old": 1}' and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_checkpoint_from_a_machine_with_more_gpus_restores_the_generators_of_those_here(monkeypatch) -> None:
    """Two GPUs' CUDA generator states, resumed where one GPU is (torch.cuda.set_rng_state_all would fail)."""
    restored: list[int] = []
    states = {**rng_states(), "cuda": [torch.get_rng_state(), torch.get_rng_state()]}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append(device))
    set_rng_states(states)
    assert restored == [0]
