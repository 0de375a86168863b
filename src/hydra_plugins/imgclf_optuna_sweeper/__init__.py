"""imgclf's Optuna sweeper for Hydra: ``python train.py -m hparams_search=<name>`` (docs/sweeps.md).

Hydra finds it because ``hydra_plugins`` is a namespace package (no ``__init__.py`` in
``src/hydra_plugins/``): Hydra imports every module under it at start-up, so these modules import
nothing heavy at the top; the work is done by :mod:`imgclf.sweeps`.
"""
