"""The composition root: the only package that reads the config and instantiates from it.

``train(cfg)`` and ``test(cfg)`` are what ``train.py`` and ``test.py`` call; they raise
:class:`~imgclf.errors.ImgclfError` for what a user can fix, and the entry points turn that into an
exit status (``imgclf.cli.exits``). Where things are:

- ``train_task`` / ``test_task``: the two tasks, each a handful of named steps in call order;
- ``build``: one builder per config group; ``preprocess``: image size and normalization, decided once;
- ``inputs``: splits, decoded images, loaders and cached features; ``calibration``: temperature scaling;
- ``config_check``: types, ranges and keys no schema checks; ``output_check``: the output folder can be written;
- ``resolvers``, ``sweep``, ``hparams``, ``failures``, ``ranks``, ``folders`` (the experiment folder a run writes: its name, its data).
"""

from imgclf.tasks import resolvers
from imgclf.tasks.doctor_task import doctor
from imgclf.tasks.test_task import test
from imgclf.tasks.train_task import train

resolvers.register()  # before Hydra composes: train.py and test.py import this package first

__all__ = ["doctor", "test", "train"]
