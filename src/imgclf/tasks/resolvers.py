"""OmegaConf resolvers used by the YAML in conf/ (registered when imgclf.tasks is imported)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from imgclf.experiment.bookkeeping import BOOKKEEPING_KEYS
from imgclf.training.distributed import launched_rank

DEFAULT_CONFIG, QUICKSTART = "train", "quickstart"


def config_name(*, _root_: Any) -> str:
    """The primary config's name (``-cn``): the default experiment name.

    ``${hydra:job.config_name}`` is not available where Hydra resolves ``hydra.sweep.dir``
    (before any job starts), so this falls back to the composed ``hydra`` node there.
    """
    if HydraConfig.initialized():
        name = HydraConfig.get().job.config_name
    else:
        name = OmegaConf.select(_root_, "hydra.job.config_name", default=None)
    if name is None:
        raise ValueError("the experiment name is unknown outside a Hydra run: set experiment=<name>")
    # conf/train.yaml is the quickstart: `python train.py` and `-cn=quickstart` are one experiment, and a
    # `python test.py -cn=quickstart` finds what `python train.py` trained
    return QUICKSTART if name == DEFAULT_CONFIG else name


# A sweep job's folder name, in bytes: under the 255 of most file systems with room for the names made from it
# (test.py names the report of a checkpoint from another folder after that folder); the names of ordinary sweeps,
# about 130 bytes with a dataset and two swept keys, stay as they were.
JOB_NAME_BYTES = 200


def job_subdir(num: Any, overrides: str) -> str:
    """A sweep job's folder (``hydra.sweep.subdir``): ``<num>_<override_dirname>`` when that fits in
    :data:`JOB_NAME_BYTES`, else its readable start and a hash of the full override string.

    The name depends only on the job's number and overrides, so the same command with the same
    ``hydra.sweep.dir`` finds its jobs again; the full overrides stay in the job's
    ``.hydra/*/overrides.yaml`` and in the sweep's ``summary.csv``.
    """
    name = f"{num}_{overrides}"
    if len(name.encode()) <= JOB_NAME_BYTES:
        return name
    digest = hashlib.sha256(overrides.encode()).hexdigest()[:12]
    start = name.replace("/", "_").encode()[: JOB_NAME_BYTES - len(digest) - 1].decode(errors="ignore")
    return f"{start}-{digest}"


def bookkeeping(*extra: str, _root_: Any = None) -> list[str]:
    """The bookkeeping keys (:data:`~imgclf.experiment.bookkeeping.BOOKKEEPING_KEYS`), every key under those
    that are sections of the config (``report.cams``: Hydra's ``exclude_keys`` matches whole keys), and
    ``extra`` ones."""
    keys = [*BOOKKEEPING_KEYS, *extra]
    for key in BOOKKEEPING_KEYS:
        section = _root_
        for part in key.split("."):  # the nodes, not their values: resolving `experiment` here would fail
            section = section._get_node(part) if OmegaConf.is_dict(section) else None
        if OmegaConf.is_dict(section):
            keys += [f"{key}.{leaf}" for leaf in _leaves(section)]
    return keys


def _leaves(section: Any) -> list[str]:
    leaves = []
    for name in section.keys():
        child = section._get_node(name)
        if OmegaConf.is_dict(child):
            leaves += [f"{name}.{leaf}" for leaf in _leaves(child)]
        else:
            leaves.append(str(name))
    return leaves


def rank0(value: Any) -> Any:
    """``value`` in the process of rank 0 (or a single process), None in the other ranks: what only one process
    of a distributed run should write (Hydra's record of the command)."""
    return value if launched_rank() == 0 else None


def rank_suffix() -> str:
    """'' for rank 0 (or a single process), ``.rank<N>`` for the others: a log file of each rank's own."""
    rank = launched_rank()
    return f".rank{rank}" if rank else ""


def user_path(path: Any) -> str:
    """``path`` with ``~`` expanded: a quoted override (``paths.experiments='~/exp'``) reaches Hydra as written,
    and ``hydra.run.dir`` made from it would otherwise be a folder named ``~`` in the working directory."""
    return os.path.expanduser(str(path))


def register() -> None:
    OmegaConf.register_new_resolver("imgclf.rank0", rank0, replace=True)
    OmegaConf.register_new_resolver("imgclf.rank_suffix", rank_suffix, replace=True)
    OmegaConf.register_new_resolver("imgclf.config_name", config_name, replace=True)
    OmegaConf.register_new_resolver("imgclf.bookkeeping", bookkeeping, replace=True)
    OmegaConf.register_new_resolver("imgclf.job_subdir", job_subdir, replace=True)
    OmegaConf.register_new_resolver("imgclf.user_path", user_path, replace=True)
