"""What an experiment may be called: one folder name, so that ``paths.experiments/<name>`` and ``paths.runs/<name>``
are folders of their own inside those two, and nothing a run writes or ``overwrite=true`` deletes lands outside
them (docs/reliability.md J1). No torch or Hydra here: predict's ONNX path checks ``--experiment NAME`` with it too."""

from __future__ import annotations

from typing import Any

from imgclf.errors import ConfigError

MAX_BYTES = 255  # the longest file name most file systems take


def name_problem(name: Any) -> str | None:
    """Why ``name`` cannot name an experiment folder, or None when it can."""
    if name is None:
        return "no name"
    text = str(name)
    if not text.strip():
        return "an empty name (an unset shell variable, as in experiment=$EXP?)"
    if text in (".", ".."):
        return "not a folder of its own but the experiments folder itself or the one above it"
    if "/" in text or "\\" in text:
        return "a path, not one folder name"
    if "\0" in text:
        return "a NUL character"
    if len(text.encode("utf-8", "surrogateescape")) > MAX_BYTES:
        return f"longer than {MAX_BYTES} bytes"
    return None


def check_name(name: Any, option: str = "experiment=") -> str:
    """``name`` as a string, or a :class:`ConfigError` naming it when it is not one plain folder name.

    Args:
        option: how the user gave it, for the message: ``experiment=`` or ``--experiment ``.
    """
    problem = name_problem(name)
    if problem is not None:
        raise ConfigError(
            f"{option}{name!r}: {problem}. An experiment is one folder name under paths.experiments "
            f"(letters, digits, '.', '-', '_'), e.g. {option}my_photos_v2"
        )
    return str(name)
