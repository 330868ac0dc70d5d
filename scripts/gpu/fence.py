"""Rehearsal import fence: hide every installed distribution the GPU machine will not have.

The CPU venv holds far more than that machine (open3d, wandb, jupyter, ...). Copied into a folder as
``sitecustomize.py`` and put first on ``PYTHONPATH``, this module makes every Python process of the rehearsal (the
stages' subprocesses too) behave as if those distributions were not installed: ``import`` raises
``ModuleNotFoundError``, ``importlib.util.find_spec`` returns None (libraries probe optional packages that way) and
``importlib.metadata`` does not list them. Hidden names that code looked for are appended to a log.

Environment: ``CSD_GPU_CHECK_FENCE`` (JSON file: {"allowed": [...], "log": path}) turns it on.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import json
import os
import re
import sys

ENV = "CSD_GPU_CHECK_FENCE"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class _Hiding(importlib.abc.MetaPathFinder):
    """Wraps one meta-path finder: blocked top-level names are not found, disallowed distributions not listed."""

    def __init__(self, inner, fence: Fence) -> None:
        self.inner = inner
        self.fence = fence

    def find_spec(self, fullname, path=None, target=None):
        if self.fence.hides(fullname):
            return None
        find = getattr(self.inner, "find_spec", None)
        return find(fullname, path, target) if find is not None else None

    def find_distributions(self, context=None):
        find = getattr(self.inner, "find_distributions", None)
        if find is None:
            return iter(())
        found = find(context) if context is not None else find()
        return (d for d in found if _normalise(d.metadata["Name"] or "") in self.fence.allowed)

    def invalidate_caches(self) -> None:
        invalidate = getattr(self.inner, "invalidate_caches", None)
        if invalidate is not None:
            invalidate()


class Fence:
    """Which top-level names and distributions are hidden; the log of hidden names that were looked for."""

    def __init__(self, allowed: set[str], log: str | None = None) -> None:
        self.allowed = {_normalise(name) for name in allowed}
        owners = importlib.metadata.packages_distributions()
        # A name is hidden only if no allowed distribution provides it (e.g. "nvidia" comes from many).
        hidden = {top for top, dists in owners.items() if not any(_normalise(d) in self.allowed for d in dists)}
        self.blocked = hidden - set(sys.stdlib_module_names)
        self.log = log
        self.seen: set[str] = set()

    def hides(self, fullname: str) -> bool:
        top = fullname.partition(".")[0]
        if top not in self.blocked:
            return False
        if self.log and top not in self.seen:
            self.seen.add(top)
            try:
                with open(self.log, "a") as handle:
                    handle.write(top + "\n")
            except OSError:
                pass
        return True


def install(allowed: set[str], log: str | None = None) -> Fence:
    """Wrap every finder on ``sys.meta_path``; modules already imported stay importable."""
    fence = Fence(allowed, log)
    sys.meta_path[:] = [_Hiding(finder, fence) for finder in sys.meta_path]
    return fence


def _install_from_env() -> None:
    config = os.environ.get(ENV)
    if not config:
        return
    with open(config) as handle:
        settings = json.load(handle)
    install(set(settings["allowed"]), settings.get("log"))


if __name__ == "sitecustomize":
    _install_from_env()
