"""The known-answer edit: does a whole 3D edit converge to what a prior asks for? (offline, CPU)

    python scripts/bench_convergence.py --source-data DIR --target-data DIR [--steps K] [--output FILE.json]
    python scripts/bench_convergence.py --output pair.json            # generates the synthetic pair itself
    python scripts/bench_convergence.py --source-data D --target-data D  # target = source: the edit must do no harm

Both folders are nerfstudio datasets with the same cameras and file names (the target's images show the edited
scene). Without them it generates the synthetic pair: 48 views of 32 px, the target with the ball recoloured, a
sphere moved, enlarged and recoloured and a box recoloured. The defaults take about 6 minutes on 2 CPU cores for
that pair (about 9 for 20 views of 48 px): 1000 source steps, 200 edit steps of 4 views. The source is trained with stock ``ns-train`` on a CPU preset, then edited by the real ``csd-edit``
trainer with the known-answer prior (each training view pulled toward the target's image of its camera).
Reported: held-out PSNR to the target before and after (``psnr_before``, ``psnr_after``), steps, seconds per
step and per phase, the backpropagation used, how much the proposal networks and fields moved. A test
instrument: the prior is never offered to users as an editing prior.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

from rich.console import Console


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source-data", type=Path, help="the source scene (default: generate the synthetic pair)")
    p.add_argument("--target-data", type=Path, help="the target scene, same cameras and file names")
    p.add_argument("--output", type=Path, help="also write the report here (JSON)")
    p.add_argument("--work-dir", type=Path, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--representation", choices=("nerfacto", "splat"), default="nerfacto")
    p.add_argument("--steps", type=int, default=200, help="edit steps")
    p.add_argument("--source-steps", type=int, default=1000, help="steps of the source run")
    p.add_argument("--num-particles", type=int, default=4, help="views per step")
    p.add_argument("--render-resolution", type=int, default=64, help="render size cap (long side, px)")
    p.add_argument("--no-coupling", action="store_true", help="no SVGD coupling between the views")
    p.add_argument("--backprop", choices=("auto", "deferred", "direct"), default="auto")
    p.add_argument("--train-appearance", action="store_true", help="let the edit train the appearance embeddings")
    p.add_argument("--densify", choices=("on", "off"), help="splats: densify and prune during the edit")
    p.add_argument("--encoder", choices=("pixels", "vae"), default="pixels", help="latents: exact or the tiny VAE")
    p.add_argument("--views", type=int, default=48, help="views of the generated pair")
    p.add_argument(
        "--source-flags",
        type=shlex.split,
        default=[],
        help='further ns-train flags of the source run, as one string: --source-flags="--pipeline.model.hidden-dim 32"',
    )
    p.add_argument("--size", type=int, default=32, help="image size of the generated pair (px)")
    p.add_argument("--held-out", type=float, default=0.2, help="fraction of the views held out for measuring")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    from csd_nerf.testing.convergence import ConvergenceConfig, run_known_answer_edit
    from csd_nerf.testing.synthetic import SyntheticSceneConfig, make_scene_pair

    args = build_parser().parse_args(argv)
    console = Console(stderr=True, highlight=False)
    if (args.source_data is None) != (args.target_data is None):
        console.print("bench_convergence: error: pass both --source-data and --target-data, or neither")
        return 2
    for path in (args.source_data, args.target_data):
        if path is not None and not (path / "transforms.json").is_file():
            console.print(f"bench_convergence: error: {path} is not a nerfstudio dataset (no transforms.json)")
            return 2
    with tempfile.TemporaryDirectory(prefix="bench_convergence_") as tmp:
        work = args.work_dir or Path(tmp)
        source, target = args.source_data, args.target_data
        if source is None:
            source, target = make_scene_pair(work / "data", SyntheticSceneConfig(args.views, args.size, args.size))
            console.print(f"generated the synthetic pair in {work / 'data'}")
        extra = {} if args.densify is None else {"densify": args.densify == "on"}
        config = ConvergenceConfig(
            source_data=source,
            target_data=target,
            work_dir=work,
            representation=args.representation,
            steps=args.steps,
            source_steps=args.source_steps,
            num_particles=args.num_particles,
            render_resolution=args.render_resolution,
            coupling=not args.no_coupling,
            backprop=args.backprop,
            freeze_appearance=not args.train_appearance,
            encoder=args.encoder,
            seed=args.seed,
            extra_pipeline=extra,
            held_out_fraction=args.held_out,
            source_flags=args.source_flags,
        )
        report = run_known_answer_edit(config, log=console.print)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
