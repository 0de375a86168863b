"""Hyperparameter searches: imgclf's Optuna sweeper (``hydra_plugins.imgclf_optuna_sweeper`` is its
Hydra face) and the job's side of a trial.

- ``search_space``: Hydra's sweep syntax (``choice``, ``range``, ``interval``, ``tag(log, ...)``) as
  Optuna distributions, and a trial's values back as overrides;
- ``optuna_sweep``: the sweep loop (ask a batch, launch it, tell the results) over a study stored
  in the sweep folder;
- ``study``: opening the study, marking trials left running by a killed sweep, and what the sweep writes
  (``summary.csv``, ``best.yaml``);
- ``trial``: the job's side: reports each epoch's monitored value and stops a pruned trial.
"""
