"""Errors the user can fix: ``ns-train csd-edit`` prints their one-line message instead of a traceback."""

from __future__ import annotations


class CSDEditError(Exception):
    """Bad input (source run, checkpoint, prompt, options); the message is one line that names the fix."""
