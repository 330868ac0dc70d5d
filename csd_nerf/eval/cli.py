"""``csd-eval``: score an edited image sequence against its source and write a JSON and a PNG plot.

Example:
    csd-eval --source data/bear --edited outputs/bear_grizzly.mp4 \
        --source-caption "a photo of a bear" --target-caption "a photo of a grizzly bear" --output eval/bear.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from csd_nerf.errors import UserError, first_line
from csd_nerf.eval.clip import DEFAULT_CLIP_MODEL
from csd_nerf.eval.errors import EvalInputError
from csd_nerf.media.images import MAX_MEGAPIXELS
from csd_nerf.signals import exit_status, signal_name, terminate_as_interrupt

if TYPE_CHECKING:
    from rich.table import Table

    from csd_nerf.eval.evaluate import EvalResult

__all__ = ["build_parser", "default_output", "check_output", "summary_table", "main", "entrypoint"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``csd-eval``."""
    p = argparse.ArgumentParser(
        prog="csd-eval",
        description="CLIP directional similarity, CLIP consistency, PSNR and LPIPS of an edited sequence against its source.",
    )
    p.add_argument(
        "--source", required=True, help="source frames: a folder of images, a video (mp4, gif, ...) or one image"
    )
    p.add_argument("--edited", required=True, help="edited frames, same count and size as --source")
    p.add_argument("--source-caption", required=True, help="caption of the source, e.g. 'a photo of a bear'")
    p.add_argument(
        "--target-caption", required=True, help="caption of the intended result, e.g. 'a photo of a grizzly bear'"
    )
    p.add_argument(
        "--clip-model",
        default=DEFAULT_CLIP_MODEL,
        help="hub id or local folder (transformers CLIPModel), open_clip:ARCH[:PRETRAINED], or 'tiny' (random, "
        f"offline smoke test, meaningless scores); default {DEFAULT_CLIP_MODEL}",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N; default auto")
    p.add_argument(
        "--output", default=None, help="JSON path; the plot goes next to it as .png (default: <edited>_eval.json)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier csd-eval result at --output")
    p.add_argument("--batch-size", type=int, default=16, help="frames per CLIP forward pass (default 16)")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS (reported as unavailable)")
    p.add_argument(
        "--resize-edited", action="store_true", help="resample edited frames to the source size instead of failing"
    )
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=MAX_MEGAPIXELS,
        help=f"largest frame read, in megapixels (default {MAX_MEGAPIXELS:g}; memory grows with it)",
    )
    p.add_argument("--quiet", action="store_true", help="print only errors and warnings")
    return p


def default_output(edited: str | Path) -> Path:
    """``<edited without suffix>_eval.json`` beside ``edited`` (never inside a frame folder, whose images are inputs)."""
    e = Path(edited).expanduser()
    name = e.name if e.is_dir() else e.stem
    return e.parent / f"{name or 'edited'}_eval.json"


def _is_our_result(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("tool") == "csd-eval"


def check_output(output: Path, overwrite: bool) -> Path:
    """Check before any work that the JSON (and the plot beside it) can be written; returns the plot's path.

    Refuses an existing result unless ``overwrite``, and never replaces a file csd-eval did not write.
    """
    from csd_nerf.eval.report import plot_path_for

    if output.suffix.lower() != ".json":
        raise EvalInputError(f"--output must end in .json (the plot is written next to it as .png), got {output}")
    plot = plot_path_for(output)
    for path in (output, plot):
        if path.is_dir():
            raise EvalInputError(f"--output: {path} is a folder: pass a .json file path")
    if output.exists() or plot.exists():
        if not overwrite:
            raise EvalInputError(f"{output} (or its plot {plot.name}) exists: pass --overwrite to replace it")
        if output.exists() and not _is_our_result(output):
            raise EvalInputError(f"{output} is not a csd-eval result: --overwrite only replaces those; choose another")
        if plot.exists() and not output.exists():
            raise EvalInputError(f"{plot} exists and is not beside a csd-eval result: choose another --output")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output.parent, prefix=".csd-eval-", delete=True):
            pass
    except OSError as exc:
        raise EvalInputError(
            f"cannot write --output {output} ({exc.strerror or first_line(exc)}): choose a writable location"
        ) from None
    if output.exists() and not os.access(output, os.W_OK):
        raise EvalInputError(f"cannot write --output {output} (read-only file): choose another")
    return plot


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def summary_table(result: EvalResult) -> Table:
    """A rich table of each metric's mean, std and count of undefined values."""
    from rich.table import Table

    table = Table(title=f"csd-eval ({result.num_frames} frames, CLIP {result.model['name']})")
    for col in ("metric", "pairing", "mean", "std", "undefined"):
        table.add_column(col)
    for key, m in result.metrics.items():
        if m.summary is None:
            table.add_row(key, m.pairing, "unavailable", "", "")  # the reason is among the warnings
        else:
            table.add_row(key, m.pairing, _fmt(m.summary.mean), _fmt(m.summary.std), str(m.summary.undefined))
    return table


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from csd_nerf.eval.clip import load_clip, quiet_hub_logging, resolve_device
    from csd_nerf.eval.evaluate import check_captions, evaluate
    from csd_nerf.eval.frames import check_pair, resize_frames
    from csd_nerf.eval.lpips import load_lpips
    from csd_nerf.eval.report import result_to_dict, write_results
    from csd_nerf.media.io import read_frames

    out = Console(quiet=args.quiet)
    err = Console(stderr=True)
    if args.batch_size < 1:
        raise EvalInputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not args.max_megapixels > 0:
        raise EvalInputError(f"--max-megapixels must be positive, got {args.max_megapixels}")
    # Cheap checks first: a typo should not cost a model load.
    check_captions(args.source_caption, args.target_caption)
    device = resolve_device(args.device)
    output = Path(args.output).expanduser() if args.output else default_output(args.edited)
    plot = check_output(output, args.overwrite)
    source = read_frames(args.source, "--source", args.max_megapixels)
    edited = read_frames(args.edited, "--edited", args.max_megapixels)
    if args.resize_edited and source.shape[0] == edited.shape[0]:
        edited = resize_frames(edited, source.shape[1], source.shape[2])
    check_pair(source, edited)

    quiet_hub_logging()
    with out.status(f"loading CLIP {args.clip_model} on {device}"):
        clip = load_clip(args.clip_model, device, batch_size=args.batch_size)
    if clip.warning:
        err.print(f"[yellow]warning:[/] {clip.warning}", soft_wrap=True)
    if args.no_lpips:
        lpips, lpips_reason = None, "disabled with --no-lpips"
    else:
        with out.status("loading LPIPS"):
            lpips, lpips_reason = load_lpips(device)

    with Progress(console=out, transient=True) as bar:
        task = bar.add_task("CLIP embedding", total=2 * source.shape[0])
        result = evaluate(
            source, edited, args.source_caption, args.target_caption, clip, lpips, lpips_reason,
            progress=lambda k: bar.advance(task, k),
        )  # fmt: skip

    inputs = {
        "source": str(args.source),
        "edited": str(args.edited),
        "resized_edited": bool(args.resize_edited),
        "device": str(device),
    }
    write_results(result_to_dict(result, inputs), result, output, plot)

    out.print(summary_table(result))
    for w in result.warnings:
        if w != clip.warning:
            err.print(f"[yellow]warning:[/] {w}", soft_wrap=True)
    if not args.no_lpips and not result.metrics["lpips"].available:
        err.print(f"[yellow]warning:[/] LPIPS unavailable: {result.metrics['lpips'].reason}", soft_wrap=True)
    out.print(f"wrote {output} and {plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``csd-eval``; returns the exit status (2 for a user error, reported on one stderr line; 128 + the
    signal after Ctrl-C or SIGTERM, which leave no result behind, not even half of one)."""
    args = build_parser().parse_args(argv)
    try:
        with terminate_as_interrupt():
            return _run(args)
    except UserError as err:
        print(f"csd-eval: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"csd-eval: interrupted ({signal_name(exc)}): nothing written", file=sys.stderr)
        return exit_status(exc)


def entrypoint() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
