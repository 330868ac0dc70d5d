"""Writing an evaluation: a JSON document (per-frame values, means, model, versions) and a PNG plot."""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from csd_nerf.eval.evaluate import EvalResult
from csd_nerf.media.errors import writing
from csd_nerf.media.output import umask_mode

__all__ = ["library_versions", "result_to_dict", "write_json", "plot_path_for", "plot_per_frame", "write_results"]

_PACKAGES = ("csd-nerf", "torch", "transformers", "torchmetrics", "torchvision", "open_clip_torch", "numpy", "imageio")


def library_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape the numbers (``None`` when not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return versions


def result_to_dict(result: EvalResult, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-ready dict of ``result``; ``inputs`` (paths, options) is stored as given."""
    metrics: dict[str, Any] = {}
    for key, m in result.metrics.items():
        entry: dict[str, Any] = {"pairing": m.pairing, "description": m.description, "available": m.available}
        if m.summary is not None:
            entry.update(asdict(m.summary))
        else:
            entry.update({"mean": None, "reason": m.reason})
        entry["per_frame"] = m.per_frame()
        metrics[key] = entry
    return {
        "tool": "csd-eval",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "meaningless": result.meaningless,
        "warnings": list(result.warnings),
        "inputs": {
            **(inputs or {}),
            "source_caption": result.source_caption,
            "target_caption": result.target_caption,
            "num_frames": result.num_frames,
            "height": result.height,
            "width": result.width,
        },
        "model": dict(result.model),
        "means": result.means(),
        "metrics": metrics,
        "timings_s": {k: round(v, 4) for k, v in result.timings_s.items()},
        "versions": library_versions(),
        "notes": [
            "CLIP embeddings are L2-normalised before differences and cosines (InstructPix2Pix / Instruct-NeRF2NeRF).",
            "null per-frame values are undefined (no change from the source) or infinite (PSNR of identical frames); "
            "means skip them and 'undefined' counts them.",
            "'consecutive' metrics have one value per pair of frames k, k+1.",
        ],
    }


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    """Write ``data`` as strict JSON (no NaN/Infinity tokens) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    return path


def plot_path_for(json_path: str | Path) -> Path:
    """The plot's path: the JSON's with a ``.png`` suffix."""
    return Path(json_path).with_suffix(".png")


def _nan(values: list[float | None] | None) -> list[float]:
    return [math.nan if v is None else v for v in values or []]


def plot_per_frame(result: EvalResult, path: str | Path) -> Path:
    """Plot the per-frame scores in three panels (CLIP per frame, consecutive pairs, PSNR/LPIPS) to a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: never open a window or need a display
    import matplotlib.pyplot as plt

    m = result.metrics
    frames = list(range(result.num_frames))
    pairs = [k + 0.5 for k in range(result.num_frames - 1)]
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)

    ax = axes[0]
    for key, label in (
        ("clip_directional_similarity", "directional"),
        ("clip_image_similarity", "image sim. to source"),
    ):
        ax.plot(frames, _nan(m[key].per_frame()), marker="o", label=f"{label} (mean {_fmt(m[key].mean)})")
    ax.set_ylabel("CLIP cosine")
    ax.set_title("per frame: edited_k vs source_k")

    ax = axes[1]
    for key, label in (
        ("clip_direction_consistency", "direction consistency"),
        ("clip_image_consistency", "image consistency"),
    ):
        ax.plot(pairs, _nan(m[key].per_frame()), marker="o", label=f"{label} (mean {_fmt(m[key].mean)})")
    if m["lpips_consecutive"].available:
        ax.plot(
            pairs,
            _nan(m["lpips_consecutive"].per_frame()),
            marker="s",
            label=f"LPIPS (mean {_fmt(m['lpips_consecutive'].mean)})",
        )
    ax.set_ylabel("score")
    ax.set_title("consecutive frames k, k+1" + ("" if pairs else " (needs two frames or more)"))

    ax = axes[2]
    ax.plot(
        frames, _nan(m["psnr"].per_frame()), marker="o", color="tab:green", label=f"PSNR (mean {_fmt(m['psnr'].mean)})"
    )
    ax.set_ylabel("PSNR [dB]")
    ax.set_xlabel("frame")
    ax.set_title("against the source")
    if m["lpips"].available:
        twin = ax.twinx()
        twin.plot(
            frames,
            _nan(m["lpips"].per_frame()),
            marker="s",
            color="tab:red",
            label=f"LPIPS (mean {_fmt(m['lpips'].mean)})",
        )
        twin.set_ylabel("LPIPS")
        twin.legend(loc="lower right", fontsize="small")
    else:
        ax.text(0.01, 0.04, "LPIPS unavailable", transform=ax.transAxes, fontsize="small", color="tab:red")

    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    title = f"{result.model['name']}: '{result.source_caption}' -> '{result.target_caption}'"
    if result.meaningless:
        title = "MEANINGLESS (random tiny CLIP)\n" + title
    fig.suptitle(title, fontsize="medium", color="tab:red" if result.meaningless else "black")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def write_results(data: dict[str, Any], result: EvalResult, json_path: Path, plot_path: Path) -> None:
    """The JSON and its plot, both or neither: each is written to a hidden file beside it and renamed into place
    once both are complete. A failed write is a one-line error naming the file that failed."""
    folder = json_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    staged: list[Path] = []
    try:
        for target, write in (
            (plot_path, lambda p: plot_per_frame(result, p)),
            (json_path, lambda p: write_json(data, p)),
        ):
            handle, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=folder)
            os.close(handle)
            staged.append(Path(name))
            os.chmod(name, umask_mode(0o666))  # mkstemp's files are private; results get the user's umask
            with writing(target):
                write(staged[-1])
        for temporary, target in zip(staged, (plot_path, json_path), strict=True):
            with writing(target):
                os.replace(temporary, target)  # the JSON last: it is what marks a csd-eval result
    finally:
        for temporary in staged:
            temporary.unlink(missing_ok=True)
