"""Hydra configs of the lightning-afm application (a package, so Hydra finds them in an installed wheel)."""
