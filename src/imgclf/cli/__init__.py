"""Command-line programs without Hydra: predict, doctor, leaderboard."""
