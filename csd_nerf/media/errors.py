"""The media package's user error: a file that cannot be read or written, named in one line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from csd_nerf.errors import UserError, first_line

__all__ = ["MediaError", "writing"]


class MediaError(UserError):
    """An input or output file problem the user can fix; the message is one line naming the file."""


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` (a full disk, no permission) into a :class:`MediaError` naming it.

    The library that fails (PIL, PyAV, json) often does not name the file, or names a temporary one.
    """
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or first_line(exc)
        raise MediaError(f"cannot write {path} ({reason}): free some space or choose another output") from None
