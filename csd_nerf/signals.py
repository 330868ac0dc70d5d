"""SIGTERM treated as Ctrl-C, so ``timeout``, a scheduler or a closed terminal stop a run as cleanly as Ctrl-C.

Every command already turns ``KeyboardInterrupt`` into "clean up or keep a checkpoint, one line, exit 130";
:func:`terminate_as_interrupt` makes SIGTERM (and SIGHUP) raise it too, in the main thread, for as long as the
context lasts.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "terminate_as_interrupt",
    "install_terminate_as_interrupt",
    "exit_status",
    "signal_name",
    "INTERRUPTED_EXIT",
]

INTERRUPTED_EXIT = 130
"""What a shell reports for a process stopped by Ctrl-C (128 + SIGINT)."""

_NAMES = ("SIGTERM", "SIGHUP")


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def exit_status(exc: KeyboardInterrupt) -> int:
    """128 + the signal that raised ``exc`` (143 for SIGTERM, 129 for SIGHUP), 130 for a plain Ctrl-C."""
    name = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
    return 128 + int(getattr(signal, name)) if name in _NAMES and hasattr(signal, name) else INTERRUPTED_EXIT


def signal_name(exc: KeyboardInterrupt) -> str:
    """``SIGTERM``/``SIGHUP`` when one of them raised ``exc``, else ``Ctrl-C``."""
    name = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
    return name if name in _NAMES else "Ctrl-C"


def install_terminate_as_interrupt() -> None:
    """For the rest of the process, SIGTERM and SIGHUP raise ``KeyboardInterrupt`` (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        for name in _NAMES:
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), _raise_interrupt)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the context, SIGTERM and SIGHUP raise ``KeyboardInterrupt`` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for name in _NAMES:
        if hasattr(signal, name):
            number = getattr(signal, name)
            previous[number] = signal.signal(number, _raise_interrupt)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
