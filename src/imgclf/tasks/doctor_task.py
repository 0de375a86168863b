"""The dataset doctor's report for the dataset a config names (``imgclf-doctor -cn <config>``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from imgclf.data.doctor import diagnose
from imgclf.tasks import build


def doctor(cfg: DictConfig, project_root: Path | None = None) -> dict[str, Any]:
    """Scan the dataset ``cfg`` names and check every file, without decoding into the cache."""
    if project_root is not None and not cfg.paths.project_root:
        cfg.paths.project_root = str(project_root)
    source = build.source(cfg)
    return diagnose(source, build.cache(cfg, mode="none"), bad_files=source.bad_files)
