"""Run one of the repository's benchmark scripts as a time-boxed subprocess and collect its JSON results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import timebox
from stagekit import StageContext

SCRIPTS = Path(__file__).resolve().parents[1]
MARGIN_S = 8.0
"""Kept back from the stage's deadline to parse and save after the benchmark ends or is killed."""


def supported_flags(script: str) -> set[str]:
    """The long options a script's ``--help`` lists (its interface may change under us)."""
    done = subprocess.run([sys.executable, str(SCRIPTS / script), "--help"], capture_output=True, text=True, timeout=60)
    return {word.strip("[],") for word in done.stdout.split() if word.startswith("--")}


def json_lines(text: str) -> list[dict]:
    """Every line of ``text`` that parses as a JSON object."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def run_script(ctx: StageContext, script: str, args: list[str], tag: str) -> tuple[timebox.Outcome, Path]:
    """Run ``script args`` until the stage's deadline (less a margin); its output goes to ``<work>/<tag>.log``."""
    log = ctx.work / f"{tag}.log"
    outcome = timebox.run([sys.executable, str(SCRIPTS / script), *args], ctx.time_left() - MARGIN_S, log)
    return outcome, log


def outcome_reason(outcome: timebox.Outcome, script: str) -> str | None:
    """Why a benchmark run did not finish cleanly, or None."""
    if outcome.timed_out:
        return f"{script} was stopped at the stage's time box after {outcome.seconds:.0f} s"
    if outcome.returncode:
        last = outcome.log_tail.splitlines()[-1] if outcome.log_tail else "no output"
        return f"{script} exited {outcome.returncode}: {last[:200]}"
    return None
