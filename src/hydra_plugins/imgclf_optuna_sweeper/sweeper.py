"""The Hydra side of the sweeper: Hydra builds it from ``hydra.sweeper`` and calls ``setup`` and ``sweep``."""

from __future__ import annotations

import logging
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.imgclf_optuna_sweeper import config as _config  # noqa: F401  registers the config

log = logging.getLogger(__name__)


class ImgclfOptunaSweeper(Sweeper):
    """Runs an Optuna study whose trials are sweep jobs; see :class:`imgclf.sweeps.optuna_sweep.OptunaSweep`."""

    def __init__(self, **settings: Any) -> None:
        # the settings stay a config node: sampler and pruner are built at sweep time
        self.settings = OmegaConf.create(settings)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        from imgclf.errors import ImgclfError
        from imgclf.sweeps.optuna_sweep import OptunaSweep

        assert self.config is not None and self.hydra_context is not None
        try:
            OptunaSweep(self.settings, self.config, self.hydra_context, self.launcher).run(arguments)
        except ImgclfError as exc:  # a setting the user can fix: one line, no traceback
            log.error("%s: %s", type(exc).__name__, exc)
            raise SystemExit(1) from None
