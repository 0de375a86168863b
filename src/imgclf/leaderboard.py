"""``python -m imgclf.leaderboard``: the README's command for the leaderboard (the code is imgclf.cli.leaderboard)."""

import sys

from imgclf.cli.leaderboard import main

if __name__ == "__main__":
    sys.exit(main())
