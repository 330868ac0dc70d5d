"""Errors of the evaluation harness that end a run with one actionable line (no traceback)."""

from __future__ import annotations

from csd_nerf.errors import UserError

__all__ = ["EvalError", "EvalInputError", "ClipLoadError"]


class EvalError(UserError):
    """Base of the harness's user-facing errors; ``str(err)`` is a single line that says how to fix it."""


class EvalInputError(EvalError):
    """The inputs cannot be evaluated: mismatched counts or sizes, bad captions, an unusable output path."""


class ClipLoadError(EvalError):
    """A CLIP model could not be loaded (offline, wrong id, missing folder, optional package not installed)."""
