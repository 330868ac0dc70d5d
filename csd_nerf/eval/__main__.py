"""``python -m csd_nerf.eval`` runs ``csd-eval``."""

from csd_nerf.eval.cli import entrypoint

entrypoint()
