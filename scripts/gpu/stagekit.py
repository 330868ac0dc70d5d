"""What a stage's code works with: its parameters, its deadline, and a record saved as it goes.

A stage runs in its own process (``stage.py``); the orchestrator may kill it at its time box, so the record is
written to disk after every measurement and whatever was measured before the kill still counts. A stage is split
into parts: a part that fails or is skipped is noted in ``parts`` and the next part still runs.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Skip(Exception):
    """Raised inside a part (or a stage) to skip it with a reason."""


def first_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


@dataclass
class StageContext:
    """A running stage: parameters from the profile, the deadline it must end by, and its record."""

    name: str
    params: dict[str, Any]
    record_path: Path
    deadline: float
    """``time.time()`` by which the stage must have written its record."""
    work: Path
    """Scratch folder for this stage's files."""
    figures: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def time_left(self) -> float:
        return self.deadline - time.time()

    def save(self, status: str = "running", reason: str | None = None) -> None:
        """Write the record atomically (the orchestrator reads it even after a kill)."""
        record = {"status": status, **({"reason": reason} if reason else {}), **self.figures}
        if self.parts:
            record["parts"] = self.parts
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, default=_jsonable))
        os.replace(tmp, self.record_path)

    @contextmanager
    def part(self, name: str, min_seconds: float = 0.0) -> Iterator[dict[str, Any]]:
        """Run one part: yields its figures dict; exceptions become ``failed``, :class:`Skip` ``skipped``.

        ``min_seconds``: skip the part up front when less time than that is left before the deadline.
        """
        figures: dict[str, Any] = {}
        start = time.monotonic()
        entry: dict[str, Any] = {"status": "running"}
        self.parts[name] = entry
        try:
            if self.time_left() < min_seconds:
                raise Skip(f"not started: {self.time_left():.0f} s left, needs about {min_seconds:.0f} s")
            yield figures
            entry["status"] = "ok"
        except Skip as skip:
            entry.update(status="skipped", reason=str(skip))
        except Exception as error:  # a failed part is recorded; the stage goes on with the next one
            entry.update(status="failed", reason=first_line(error))
            entry["traceback"] = traceback.format_exc(limit=-4)[-1500:]
        finally:
            entry["seconds"] = round(time.monotonic() - start, 2)
            entry.update(figures)
            self.save()

    def status(self) -> tuple[str, str | None]:
        """Overall status from the parts: failed if any failed, skipped if all skipped, else ok."""
        states = [p["status"] for p in self.parts.values()]
        if any(s == "failed" for s in states):
            failed = [f"{n}: {p.get('reason', '')}" for n, p in self.parts.items() if p["status"] == "failed"]
            return "failed", "; ".join(failed)[:500]
        if states and all(s == "skipped" for s in states):
            return "skipped", "; ".join(f"{n}: {p.get('reason', '')}" for n, p in self.parts.items())[:500]
        return "ok", None


def _jsonable(value: Any) -> Any:
    """JSON for the odd value a figure may hold (numpy/torch scalars, paths)."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
