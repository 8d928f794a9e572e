"""cryospa.io."""
