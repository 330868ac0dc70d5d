"""``run.json``: what a ``csd-edit-2d`` run did (settings, input, outputs, versions, device, timings)."""

from __future__ import annotations

import argparse
import json
import platform
from dataclasses import asdict
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from csd_nerf.media.errors import writing

__all__ = ["versions", "device_info", "run_record", "write_record"]


def versions() -> dict:
    """Python, platform and the versions of the packages that shape the result."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("csd-nerf", "torch", "diffusers", "transformers", "numpy", "av", "pillow"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def device_info(device: str) -> dict:
    """The device's name and the run's peak memory (GPU memory, or the process's peak resident memory)."""
    info: dict[str, Any] = {"device": device, "threads": torch.get_num_threads()}
    if torch.device(device).type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
    else:
        info["name"] = platform.processor() or platform.machine()
        try:
            import resource

            # ru_maxrss is KiB on Linux: the process's peak resident memory.
            info["peak_rss_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        except ImportError:
            pass
    return info


def run_record(
    args: argparse.Namespace, argv: list[str], settings: dict[str, Any], job: Any, scene: Any, **extra: Any
) -> dict:
    """The record of a run: ``settings`` are dataclasses (edit, optim, guidance) stored as dicts."""
    return {
        "command": args.command,
        "argv": list(argv),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": args.seed,
        "config": {"args": dict(vars(args))} | {key: asdict(value) for key, value in settings.items()},
        "input": {"path": str(Path(args.input).absolute())} | job.info(scene),
        "notices": list(job.notices),
        "versions": versions(),
        **extra,
    }


def write_record(folder: Path, record: dict) -> None:
    """Write ``folder/run.json`` (a failed write names it)."""
    path = folder / "run.json"
    with writing(path):
        path.write_text(json.dumps(record, indent=2) + "\n")
