"""What resuming may do: whether a run is finished, and which changed settings forbid continuing it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from imgclf.errors import ExperimentError
from imgclf.experiment.bookkeeping import BOOKKEEPING_KEYS
from imgclf.experiment.checkpoint import load_checkpoint
from imgclf.experiment.folder import ExperimentDir

log = logging.getLogger(__name__)


def resumed_config(exp: ExperimentDir, resume: str, overwrite: bool) -> dict[str, Any] | None:
    """The config of the checkpoint a run will resume from, read as ``ExperimentDir.resume_payload`` reads it
    (``last.pt``, or ``best.pt`` when ``last.pt`` cannot be read), or None for a fresh start (``resume=never``,
    ``overwrite``, or nothing to resume). A choice a run made for its budget is read back from it."""
    if overwrite or resume == "never":
        return None
    payload = exp.latest_checkpoint() if resume == "auto" else load_checkpoint(resume)
    return None if payload is None else payload.get("config", {})


def is_finished(payload: dict[str, Any], epochs: int) -> bool:
    state = payload["state"]
    planned = (state.get("budget") or {}).get("epochs") or epochs  # a budgeted run ends with its plan
    return state.get("stopped_early", False) or (state["epoch"] >= min(planned, epochs) and not state["step"])


STRUCTURAL_KEYS = ("model", "dataset.image_size", "dataset.resize", "dataset.root", "dataset.mean", "dataset.std")
# which images a run trains and tests on, beyond the folder: another value is other data (data_change); a list
# edited in place is caught by what it does (tasks.inputs applies it again to the splits splits.csv recorded)
SELECTION_KEYS = ("dataset.folds", "dataset.fold", "dataset.exclude", "dataset.relabel")
# what a setting meant in configs saved before it existed (checkpoints from before dataset.resize squashed)
OLD_DEFAULTS = {"dataset.resize": "squash"}
# keys that say where or how a run was started, or what test.py evaluates: changing them changes no training
UNWARNED_KEYS = (*BOOKKEEPING_KEYS, "ckpt", "split", "tta", "loader.num_workers", "loader.pin_memory")


def _flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(cfg, dict):
        return {prefix: cfg}
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        flat.update(
            _flatten(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}": value}
        )
    return flat


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def compare_configs(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Differences that forbid resuming (:data:`STRUCTURAL_KEYS`), and every other changed setting as
    ``key: old -> new``, which resuming warns about (docs/reliability.md D6, G6)."""

    def get(cfg: dict[str, Any], dotted: str) -> Any:
        value: Any = cfg
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return OLD_DEFAULTS.get(dotted) if value is None else value

    def change(key: str, old: Any, new: Any) -> str:
        return f"{key}: {old!r} -> {new!r}"

    refused = [
        change(k, get(saved, k), get(current, k))
        for k in (*STRUCTURAL_KEYS, *SELECTION_KEYS[:2])
        if get(saved, k) != get(current, k)
    ]
    old, new = _flatten(saved), _flatten(current)
    sections = {k.split(".", 1)[0] for k in old}  # a top-level key added to imgclf after the checkpoint: no change
    warned = [
        change(k, old.get(k), new.get(k))
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
        and not _under(k, (*STRUCTURAL_KEYS, *SELECTION_KEYS[:2], *UNWARNED_KEYS))
        and k.split(".", 1)[0] in sections
    ]
    return refused, warned


def trained_on(payload: dict[str, Any], project_root: Path) -> Path | None:
    """The data folder a checkpoint's run read: its saved ``dataset.root`` (a relative one against
    ``project_root``), links resolved; None for a checkpoint whose config names none."""
    root = ((payload.get("config") or {}).get("dataset") or {}).get("root")
    if root is None:
        return None
    path = Path(str(root)).expanduser()
    return (path if path.is_absolute() else project_root / path).resolve()


def data_change(
    payload: dict[str, Any],
    root: str | Path,
    classes: list[str],
    project_root: Path,
    dataset: dict[str, Any] | None = None,
) -> str | None:
    """How the data a checkpoint was trained on differs from ``root`` and its ``classes`` (docs/reliability.md J3), or None.

    The data is identified by the folder's resolved path, not its content: a folder moved or copied to another
    path is other data too, since the experiment's splits.csv and reports name the files under the old one.
    With ``dataset`` (the current ``dataset`` config), another fold or another reviewed list is other data too
    (a run on fold 1 is not "finished" because fold 0 was).
    """
    saved = trained_on(payload, project_root)
    if saved is not None and saved != Path(root).expanduser().resolve():
        return f"dataset.root: {saved} -> {Path(root).expanduser().resolve()}"
    if list(payload["class_names"]) != list(classes):
        return f"classes: {list(payload['class_names'])} -> {list(classes)} in {root}"
    theirs = (payload.get("config") or {}).get("dataset") or {}
    for key in SELECTION_KEYS if dataset is not None else ():
        name = key.split(".", 1)[1]
        if theirs.get(name) != dataset.get(name):
            return f"{key}: {theirs.get(name)!r} -> {dataset.get(name)!r}"
    return None


def check_classes(payload: dict[str, Any], classes: list[str]) -> None:
    """Refuse to resume when the class folders changed (checked before the saved splits are read)."""
    if list(payload["class_names"]) != classes:
        refuse([f"classes: {payload['class_names']} -> {classes}"])


def refuse(refused: list[str]) -> None:
    if refused:
        raise ExperimentError(
            "cannot resume: these settings differ from the checkpoint's:\n  "
            + "\n  ".join(refused)
            + "\nuse experiment=<new name> or overwrite=true"
        )


def check_resumable(payload: dict[str, Any], config: dict[str, Any], classes: list[str]) -> list[str]:
    """Refuse to resume when the model, data or classes changed; warn about other changes, and return them.

    Args:
        payload: the checkpoint to resume from.
        config: the current resolved config, as plain data.
        classes: the class list found in the data now.
    """
    refused, warned = compare_configs(payload["config"], config)
    if list(payload["class_names"]) != classes:
        refused.append(f"classes: {payload['class_names']} -> {classes}")
    refuse(refused)
    if warned:
        log.warning(
            "resuming from epoch %d with %d changed setting(s), which apply from here on (the config "
            "history in config_history/ keeps what ran before):\n  %s",
            payload["state"]["epoch"],
            len(warned),
            "\n  ".join(warned),
        )
    return warned
