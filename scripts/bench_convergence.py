"""The known-answer edit: does a whole 3D edit converge to what a prior asks for? (offline, CPU)

    python scripts/bench_convergence.py --source-data DIR --target-data DIR [--steps K] [--output FILE.json]
    python scripts/bench_convergence.py --output pair.json            # generates the synthetic pair itself
    python scripts/bench_convergence.py --source-data D --target-data D  # target = source: the edit must do no harm
    python scripts/bench_convergence.py --local                 # generated triple: a local edit of the box only
    python scripts/bench_convergence.py --source-data S --target-data T --local-target-data L \
        --region CX,CY,CZ,HX,HY,HZ                              # edit toward T inside a box only; measure against L

    python scripts/bench_convergence.py --mode distill idu      # both ways of applying the step, side by side
    python scripts/bench_convergence.py --mode idu --idu-every 20 --idu-views 8

``--mode`` picks how the CSD-Edit step is applied: ``distill`` (into the scene through the renderer, every step)
or ``idu`` (iterative dataset update: every ``--idu-every`` steps the prior edits ``--idu-views`` views' latents
toward their targets for ``--idu-steps`` steps, writes them into the training images, and the scene fits them).
Both are measured the same way; ``--eval-every E`` also measures the held-out PSNR every E steps and reports the
first step and the edit time (measuring excluded) at which the held-out gain reaches +3 dB. Several modes run one
after the other on the same source and end with a table.

Both folders are nerfstudio datasets with the same cameras and file names (the target's images show the edited
scene). Without them it generates the synthetic pair: 48 views of 32 px, the target with the ball recoloured, a
sphere moved, enlarged and recoloured and a box recoloured. The defaults take about 6 minutes on 2 CPU cores for
that pair (about 9 for 20 views of 48 px): 1000 source steps, 200 edit steps of 4 views. The source is trained with stock ``ns-train`` on a CPU preset, then edited by the real ``csd-edit``
trainer with the known-answer prior (each training view pulled toward the target's image of its camera).
Reported: held-out PSNR to the target before and after (``psnr_before``, ``psnr_after``), steps, seconds per
step and per phase, the backpropagation used, how much the proposal networks and fields moved. With a region
and a local target (the source with only the region's object edited): ``psnr_local_before/after`` (held-out
PSNR to the local target) and ``psnr_outside_source_before/after`` (held-out PSNR to the source over the pixels
where the local target equals it). The region is an axis-aligned box (centre, half-sizes) in the datasets' own
coordinates (their ``transforms.json``), converted with the source run's dataparser transform. A test
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
    from csd_nerf.editor import CSDEditConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source-data", type=Path, help="the source scene (default: generate the synthetic pair)")
    p.add_argument("--target-data", type=Path, help="the target scene, same cameras and file names")
    p.add_argument("--output", type=Path, help="also write the report here (JSON)")
    p.add_argument("--work-dir", type=Path, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--representation", choices=("nerfacto", "splat"), default="nerfacto")
    p.add_argument("--steps", type=int, default=200, help="edit steps")
    p.add_argument("--source-steps", type=int, default=1000, help="steps of the source run")
    p.add_argument("--num-particles", type=int, default=CSDEditConfig.num_particles, help="views per step")
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
    m = p.add_argument_group("how the step is applied")
    m.add_argument("--mode", choices=("distill", "idu"), nargs="+", default=["distill"], help="one or both")
    m.add_argument("--eval-every", type=int, default=10, help="measure the held-out PSNR every E steps (0: never)")
    m.add_argument("--idu-every", type=int, help="idu: steps between updates (default: the pipeline's, 160)")
    m.add_argument("--idu-views", type=int, help="idu: views per update (default: the pipeline's, 16)")
    m.add_argument("--idu-steps", type=int, help="idu: CSD-Edit steps per update (default: the pipeline's, 20)")
    m.add_argument("--idu-lr", type=float, help="idu: SGD lr on the latents (default: the pipeline's, 2.0)")
    m.add_argument("--rays-per-batch", type=int, default=1024, help="nerfacto idu: rays per training step")
    r = p.add_argument_group("local edits")
    r.add_argument("--region", type=_box, help="CX,CY,CZ,HX,HY,HZ: edit inside this box only (dataset coordinates)")
    r.add_argument(
        "--local-target-data", type=Path, help="the local target: the source with the region's object edited"
    )
    r.add_argument("--local", action="store_true", help="generate the triple and edit the box primitive only")
    r.add_argument("--region-margin", type=float, default=0.0, help="soft edge of the region (world units)")
    r.add_argument("--region-preservation", type=float, help="nerfacto: pull toward the source outside the region")
    return p


def _box(text: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in text.split(","))
    if len(values) != 6 or min(values[3:]) <= 0:
        raise argparse.ArgumentTypeError("give six numbers CX,CY,CZ,HX,HY,HZ with positive half-sizes")
    return values


def main(argv: list[str] | None = None) -> int:
    from csd_nerf.testing.convergence import run_known_answer_edit
    from csd_nerf.testing.synthetic import LOCAL_REGION, SyntheticSceneConfig, make_scene_triple

    args = build_parser().parse_args(argv)
    console = Console(stderr=True, highlight=False)
    if (args.source_data is None) != (args.target_data is None):
        console.print("bench_convergence: error: pass both --source-data and --target-data, or neither")
        return 2
    if args.local and args.source_data is not None:
        console.print("bench_convergence: error: --local generates its scenes: drop --source-data/--target-data")
        return 2
    for path in (args.source_data, args.target_data, args.local_target_data):
        if path is not None and not (path / "transforms.json").is_file():
            console.print(f"bench_convergence: error: {path} is not a nerfstudio dataset (no transforms.json)")
            return 2
    with tempfile.TemporaryDirectory(prefix="bench_convergence_") as tmp:
        work = args.work_dir or Path(tmp)
        source, target, local = args.source_data, args.target_data, args.local_target_data
        if source is None:
            source, target, generated_local = make_scene_triple(
                work / "data", SyntheticSceneConfig(args.views, args.size, args.size)
            )
            console.print(f"generated the synthetic scenes in {work / 'data'}")
            if args.local:
                local, args.region = generated_local, args.region or (*LOCAL_REGION[0], *LOCAL_REGION[1])
        extra = {} if args.densify is None else {"model.densify": args.densify == "on"}
        reports = {}
        for mode in dict.fromkeys(args.mode):
            config = _config(args, source, target, local, work, extra, mode)
            reports[mode] = run_known_answer_edit(config, log=console.print)
    if len(reports) == 1:
        report = next(iter(reports.values()))
    else:
        report = {"modes": reports, "table": side_by_side(reports)}
        console.print(report["table"])
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    return 0


def side_by_side(reports: dict) -> str:
    """A Markdown table of the modes' held-out PSNR to the target, time and the first +3 dB."""
    lines = [
        "| mode | held-out PSNR to target | gain | s/step | total s | first +3 dB (step, s) |",
        "|---|---|---|---|---|---|",
    ]
    for mode, r in reports.items():
        step, seconds = r.get("first_step_gain_3db"), r.get("first_seconds_gain_3db")
        first = f"{step}, {seconds}" if step is not None else "not reached"
        lines.append(
            f"| {mode} | {r['psnr_before']} -> {r['psnr_after']} | {r['psnr_gain']:+.2f} | {r['seconds_per_step']} "
            f"| {r['seconds']} | {first} |"
        )
    return "\n".join(lines)


def _config(args, source, target, local, work, extra, mode):
    from csd_nerf.testing.convergence import ConvergenceConfig

    return ConvergenceConfig(
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
        region=args.region,
        region_margin=args.region_margin,
        region_preservation=args.region_preservation,
        local_target_data=local,
        mode=mode,
        idu_every=args.idu_every,
        idu_views=args.idu_views,
        idu_steps=args.idu_steps,
        idu_lr=args.idu_lr,
        train_rays_per_batch=args.rays_per_batch,
        eval_every=args.eval_every,
    )


if __name__ == "__main__":
    sys.exit(main())
