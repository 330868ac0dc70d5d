"""Run one stage of the GPU check in this process; the orchestrator (``check.py``) time-boxes it.

    python scripts/gpu/stage.py NAME --params FILE --record FILE --deadline EPOCH --work DIR

The stage's record (status, reason, figures, parts) is written to ``--record`` as it goes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from pathlib import Path

from stagekit import Skip, StageContext, first_line

STAGES = {"core": "stage_core", "fp16": "stage_fp16", "nerf": "stage_nerf", "splat": "stage_splat", "2d": "stage_2d"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(STAGES))
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--deadline", type=float, required=True)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(args.name, json.loads(args.params.read_text()), args.record, args.deadline, args.work)
    ctx.save()
    try:
        importlib.import_module(STAGES[args.name]).run(ctx)
        status, reason = ctx.status()
    except Skip as skip:
        status, reason = "skipped", str(skip)
    except Exception as error:  # recorded, never raised: the orchestrator moves on to the next stage
        traceback.print_exc()
        status, reason = "failed", first_line(error)
    ctx.save(status, reason)
    print(f"stage {args.name}: {status}" + (f" ({reason})" if reason else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
