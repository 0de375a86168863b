"""The config keys that say where or how a run was started, not what was trained.

Left out of sweep job folder names (``hydra.job.override_dirname``, through the
``${imgclf.bookkeeping:}`` resolver in conf/train.yaml, which spells out the keys under a
section because Hydra matches whole keys), of TensorBoard's HParams and of the
leaderboard's columns.
"""

BOOKKEEPING_KEYS = (
    "experiment",
    "resume",
    "overwrite",
    "device",
    "progress",
    "paths.experiments",
    "paths.runs",
    "paths.cache",
    "paths.project_root",
    "sweep_trial",  # set by the Optuna sweeper: which trial of which study a job is
    "preview",  # imgclf-preview's and imgclf-audit's own settings: they change nothing a training run does
    "audit",
    "lr_find",  # imgclf-lr-find's sweep: it trains nothing that is kept
    "report",  # how test.py reports a run (figures, maps, intervals): nothing it trains
)


def is_bookkeeping(key: str) -> bool:
    """``key`` is a bookkeeping key or lies under one (``preview.batches``, ``report.cams``)."""
    return any(key == k or key.startswith(f"{k}.") for k in BOOKKEEPING_KEYS)
