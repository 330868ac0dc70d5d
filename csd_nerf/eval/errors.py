"""Errors of the evaluation harness that end a run with one actionable line (no traceback)."""

from __future__ import annotations

__all__ = ["EvalError", "EvalInputError", "ClipLoadError"]


class EvalError(Exception):
    """Base of the harness's user-facing errors; ``str(err)`` is a single line that says how to fix it."""

    def __init__(self, message: str) -> None:
        # Collapse any multi-line cause into one line: the CLI promises exactly one line on stderr.
        super().__init__(" ".join(message.split()))


class EvalInputError(EvalError):
    """The inputs cannot be evaluated: a missing path, unreadable frames, mismatched counts or sizes, bad captions."""


class ClipLoadError(EvalError):
    """A CLIP model could not be loaded (offline, wrong id, missing folder, optional package not installed)."""
