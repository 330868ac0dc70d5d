"""Errors of the guidance that carry a one-line fix for the user."""


class GuidanceLoadError(RuntimeError):
    """The diffusion prior could not be loaded; the message says how to fix it."""
