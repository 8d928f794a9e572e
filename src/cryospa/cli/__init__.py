"""cryospa.cli."""
