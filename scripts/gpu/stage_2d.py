"""Stage ``2d``: a 2048x512 panorama step and a 24-frame 512 px video step (``scripts/bench_2d.py``)."""

from __future__ import annotations

import subbench
from stagekit import StageContext


def run(ctx: StageContext) -> None:
    with ctx.part("bench_2d") as fig:
        outcome, log = subbench.run_script(ctx, "bench_2d.py", ctx.params["args"], "bench_2d")
        rows = subbench.json_lines(log.read_text(errors="replace"))
        ctx.figures["cases"] = {row.get("case", f"row{i}"): row for i, row in enumerate(rows)}
        fig["seconds_in_script"] = outcome.seconds
        failed = [f"{row.get('case')}: {row['error']}" for row in rows if "error" in row]
        reason = subbench.outcome_reason(outcome, "bench_2d.py")
        if reason or failed or not rows:
            raise RuntimeError(reason or "; ".join(failed) or "bench_2d.py printed no result")
