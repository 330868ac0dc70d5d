"""Run a command with a wall-clock limit, killing its whole process group (its own subprocesses too) at the limit."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Outcome:
    """How a time-boxed command ended."""

    returncode: int | None
    """None when it was killed at the limit."""
    seconds: float
    timed_out: bool
    log_tail: str
    """The last lines of its combined stdout and stderr."""


def kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the process group, give it ``grace_s``, then SIGKILL whatever of the group is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # members of the group can outlive its leader
    except ProcessLookupError:
        pass
    proc.wait()


def tail(path: Path, lines: int = 8) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run(argv: list[str], timeout_s: float, log: Path, env: dict | None = None, cwd: Path | None = None) -> Outcome:
    """Run ``argv`` in a new session with output to ``log``; at ``timeout_s`` kill its group and report it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "ab") as handle:
        proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        try:
            returncode = proc.wait(timeout=max(0.0, timeout_s))
            timed_out = False
            kill_group(proc, grace_s=0.0)  # nothing it started may run on into the next stage
        except subprocess.TimeoutExpired:
            kill_group(proc)
            returncode, timed_out = None, True
    return Outcome(returncode, round(time.monotonic() - start, 2), timed_out, tail(log))
