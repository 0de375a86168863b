"""Path arguments of the command-line programs: ``~`` expanded as the shell would have done.

The shell expands ``~`` only when it is unquoted and starts a word, so ``--output "~/p.csv"``,
``--output=~/p.csv`` and a path pasted from a config file reach the program as written; Python's
``open`` would then make a folder named ``~`` in the working directory. Every path argument of
predict, export, serve, doctor, leaderboard and split goes through :func:`user_path`.
"""

from __future__ import annotations

import os
from pathlib import Path


def user_path(text: str) -> Path:
    """An argparse ``type``: the path with ``~`` and ``~user`` expanded."""
    return Path(os.path.expanduser(text))
