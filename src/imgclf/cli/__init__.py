"""The command-line programs besides train.py and test.py: predict, doctor, split, leaderboard, export, serve.

None reads a Hydra config (doctor -cn goes through imgclf.tasks); each parses its command line before it
imports torch, so --help and --version answer at once."""
