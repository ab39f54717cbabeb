"""Quality scorers for cascades: each returns a number in [0, 1] and a reason."""
