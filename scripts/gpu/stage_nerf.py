"""Stage ``nerf``: the 3D nerfacto edit step on the synthetic scene (``scripts/bench_nerf.py``), deferred vs direct
backpropagation, per-phase time, peak memory, and the projected wall time of a whole edit.

bench_nerf.py is another module's benchmark: it is only called through its command line, the flags it does not
(or no longer) list in ``--help`` are dropped with a note, and its results are read from its ``--out`` file.
"""

from __future__ import annotations

import json
from pathlib import Path

import subbench
from stagekit import StageContext


def usable_args(args: list[str], flags: set[str]) -> tuple[list[str], list[str]]:
    """``args`` without options the script does not list (and their values); and the dropped options."""
    kept, dropped, skipping = [], [], False
    for arg in args:
        if arg.startswith("--"):
            skipping = arg not in flags
            if skipping:
                dropped.append(arg)
                continue
        elif skipping:
            continue
        kept.append(arg)
    return kept, dropped


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return subbench.json_lines(path.read_text(errors="replace"))


def project(rows: list[dict], steps: int, memory_goal_mb: float) -> list[dict]:
    """Per measured configuration: the wall time of ``steps`` steps and whether its peak meets the memory goal."""
    out = []
    for row in rows:
        if "step_s" not in row:
            continue
        out.append(
            {
                "resolution": row.get("resolution"),
                "n": row.get("n"),
                "mode": row.get("mode"),
                f"projected_{steps}_steps_min": round(steps * row["step_s"] / 60, 1),
                "peak_step_mb": row.get("peak_step_mb"),
                "memory_goal_met": row.get("peak_step_mb", float("inf")) <= memory_goal_mb,
            }
        )
    return out


def run_bench_nerf(ctx: StageContext, args: list[str], tag: str) -> dict:
    """Run bench_nerf.py with ``args`` (plus ``--out``); its rows, projections, and why it stopped if it failed."""
    flags = subbench.supported_flags("bench_nerf.py")
    out = ctx.work / f"{tag}.jsonl"
    out.unlink(missing_ok=True)
    kept, dropped = usable_args([*args, "--out", str(out)], flags)
    outcome, _ = subbench.run_script(ctx, "bench_nerf.py", kept, tag)
    rows = read_rows(out)
    result = {
        "args": kept,
        "rows": rows,
        "errors": [
            f"{r.get('resolution')} px N={r.get('n')} {r.get('mode')}: {r['error']}" for r in rows if "error" in r
        ],
        "script_seconds": outcome.seconds,
    }
    if dropped:
        result["dropped_flags"] = dropped
    reason = subbench.outcome_reason(outcome, "bench_nerf.py")
    if reason or not any("step_s" in r for r in rows):
        raise RuntimeError(reason or f"bench_nerf.py measured nothing: {json.dumps(result['errors'])[:300]}")
    return result


def run(ctx: StageContext) -> None:
    p = ctx.params
    with ctx.part("bench_nerf") as fig:
        result = {}
        try:
            result = run_bench_nerf(ctx, p["args"], "bench_nerf")
        finally:
            rows = result.get("rows") or read_rows(ctx.work / "bench_nerf.jsonl")
            ctx.figures["rows"] = rows
            ctx.figures["projection"] = project(rows, p["projection_steps"], p["memory_goal_mb"])
            fig.update({k: v for k, v in result.items() if k != "rows"})
