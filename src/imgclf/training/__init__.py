"""The training loop and what it needs: options, state, scheduler, validation, cached features, signals."""
