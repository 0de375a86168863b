"""The experiment folder: its lock, checkpoints (written atomically, read safely), resume rules and run log."""
