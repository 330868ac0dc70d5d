"""The one base for errors a user can fix, and the one way to turn any exception into a single line.

Every command catches :class:`UserError` (and nothing broader) and prints its message without a traceback;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UserError", "SettingError", "first_line", "check_text"]


class UserError(Exception):
    """Bad input the user can fix (a path, a file, a setting, a model); the message is one line naming the fix."""

    def __init__(self, message: str) -> None:
        # A multi-line cause (a library's message) must not break the one-line promise.
        super().__init__(" ".join(str(message).split()))


class SettingError(UserError, ValueError):
    """A setting out of range (a scale, a timestep range, a count); also a ``ValueError`` for library callers."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of ``exc``'s message (its type name when it has none), at most ``limit`` chars."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__


def check_text(value: str, flag: str) -> str:
    """``value`` unchanged when it is valid UTF-8 text, else a :class:`SettingError` naming ``flag``.

    Python hands undecodable command-line bytes over as lone surrogates (``'\\udcff'``), which tokenizers
    reject deep inside; this says so in one line instead.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value.encode("utf-8", "surrogateescape")[exc.start : exc.start + 1]
        raise SettingError(
            f"{flag} is not valid UTF-8 text (byte 0x{bad.hex() if bad else '??'} at position {exc.start}): "
            f"retype it, or set a UTF-8 locale (e.g. LANG=C.UTF-8) in the shell that passes it"
        ) from None
    return value
