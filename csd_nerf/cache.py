"""The folder where csd-nerf keeps what it generates (miniature models), and building into it safely."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """``$CSD_NERF_CACHE``, else ``~/.cache/csd_nerf``."""
    return Path(os.environ.get("CSD_NERF_CACHE") or Path.home() / ".cache" / "csd_nerf").expanduser()


def build_once(target: Path, marker: str, build: Callable[[Path], object]) -> Path:
    """``target``, built by ``build(folder)`` unless ``target/marker`` exists.

    The build goes into a staging folder beside ``target`` and is renamed into place, so a concurrent or
    interrupted build never leaves half a folder; a process that loses the race keeps the winner's.
    """
    target = Path(target)
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / marker).exists():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
