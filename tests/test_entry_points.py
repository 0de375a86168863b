"""Every console script answers --help and --version at once (no torch imported), names itself as it was run,
and spells the experiments folder option the same way (issue 28)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from imgclf.cli.common import version

# console script -> the module whose main() it runs (pyproject.toml [project.scripts])
SCRIPTS = {
    "imgclf-doctor": "imgclf.cli.doctor",
    "imgclf-split": "imgclf.cli.split",
    "imgclf-predict": "imgclf.cli.predict",
    "imgclf-leaderboard": "imgclf.cli.leaderboard",
    "imgclf-serve": "imgclf.cli.serve",
    "imgclf-export": "imgclf.cli.export",
    "imgclf-audit": "imgclf.cli.audit",
    "imgclf-preview": "imgclf.cli.preview",
    "imgclf-lr-find": "imgclf.cli.lr_find",
}
PROBE = """
import sys
sys.argv = [{name!r}, {flag!r}]
from {module} import main
try:
    main()
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "hydra", "matplotlib", "onnxruntime", "fastapi") if m in sys.modules)
print("HEAVY", heavy, "CODE", code)
"""


def _probe(name: str, flag: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(name=name, flag=flag, module=SCRIPTS[name])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_scripts_in_pyproject_are_these() -> None:
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert {name: target.split(":")[0] for name, target in scripts.items()} == SCRIPTS


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_imports_no_torch_and_names_the_script(name: str) -> None:
    out = _probe(name, "--help")
    assert "HEAVY [] CODE 0" in out, out[-500:]
    assert f"usage: {name}" in out


@pytest.mark.parametrize("name", SCRIPTS)
def test_version(name: str) -> None:
    out = _probe(name, "--version")
    assert f"{name} (imgclf {version()})" in out and "HEAVY [] CODE 0" in out


@pytest.mark.parametrize("name", ["imgclf-predict", "imgclf-export", "imgclf-serve", "imgclf-leaderboard"])
def test_the_experiments_folder_is_one_option_everywhere(name: str) -> None:
    out = _probe(name, "--help")
    assert "--experiments-dir DIR" in out
