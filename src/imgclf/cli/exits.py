"""Exit statuses of ``train.py`` and ``test.py``: what a user can fix is one line of text, never a traceback.

1: an :class:`~imgclf.errors.ImgclfError` (bad key, data, checkpoint, busy experiment, training
fault); 130 / 143: stopped by Ctrl-C / SIGTERM (training resumes with the same command). In a
sweep (``-m``), errors propagate instead, so Hydra marks that job failed and runs the others.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from omegaconf import DictConfig

from imgclf.errors import ImgclfError
from imgclf.tasks.folders import in_sweep
from imgclf.training.state import Interrupted

log = logging.getLogger("imgclf")
T = TypeVar("T")


def exit_on_error(task: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """``task(cfg)``, with user errors and interrupts turned into a message and an exit status."""
    try:
        return task(cfg)
    except Interrupted as exc:
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:  # before or after training: nothing to save
        log.warning("interrupted")
        raise SystemExit(130) from None
    except ImgclfError as exc:
        if in_sweep():
            raise
        log.error("%s: %s", type(exc).__name__, exc)
        raise SystemExit(1) from None


@contextmanager
def override_hints(argv: Sequence[str] | None = None) -> Iterator[None]:
    """Run a Hydra entry point (``with override_hints(): main()``) and, when it stops on an override whose
    unquoted ``~`` Hydra's grammar rejects, add how to write it after Hydra's own message.

    Hydra parses the overrides, and prints its error and exits 1, before ``main`` runs, so this wraps ``main``
    from outside; with ``HYDRA_FULL_ERROR=1`` the hint comes before the traceback.
    """
    try:
        yield
    except SystemExit as exc:
        if exc.code not in (0, None):
            _print_tilde_hint(sys.argv[1:] if argv is None else argv)
        raise
    except Exception:
        _print_tilde_hint(sys.argv[1:] if argv is None else argv)
        raise


def tilde_overrides(argv: Sequence[str]) -> list[str]:
    """The overrides in ``argv`` that Hydra's grammar rejects and that hold a ``~`` in their value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    rejected = []
    for arg in argv:
        if arg.startswith("-") or "~" not in arg.partition("=")[2]:  # options, and `~key` (Hydra's delete)
            continue
        try:
            parser.parse_overrides([arg])
        except OverrideParseException:
            rejected.append(arg)
    return rejected


def tilde_hint(argv: Sequence[str]) -> str:
    """How to write the overrides of ``argv`` that Hydra rejects for an unquoted ``~`` ('' when there are none)."""
    rejected = tilde_overrides(argv)
    if not rejected:
        return ""
    key, _, value = rejected[0].partition("=")
    home = value == "~" or value.startswith("~/")
    fix = f"write {key}={value.replace('~', '$HOME', 1)} (the shell expands $HOME), or quote" if home else "quote"
    return (
        f"hint: Hydra's override grammar takes no unquoted ~ ({', '.join(rejected)}), and the shell does not "
        f"expand it after `key=`: {fix} the value for Hydra inside the shell's quotes: "
        f"\"{key}='{value}'\" (imgclf expands ~ in dataset and paths folders)"
    )


def _print_tilde_hint(argv: Sequence[str]) -> None:
    hint = tilde_hint(argv)
    if hint:
        print(hint, file=sys.stderr)
