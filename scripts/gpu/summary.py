"""A human-readable summary of ``gpu_check.jsonl``: one block per stage, its key figures and the goals."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _fmt(value, digits: int = 1) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _core(r: dict) -> list[str]:
    lines = []
    for row in r.get("steps", []):
        lines.append(
            f"N={row['n_particles']}: step {row['step_ms']} ms (first {row['first_step_ms']} ms), UNet share "
            f"{row['unet_share']:.3f}, {row['unet_evals_per_particle']:g} UNet evals/particle, peak {row['peak_mem_mb']:.0f} MB"
        )
    speed = r.get("speedups", {})
    rows = speed.get("rows", {})
    if rows or speed.get("default_step_ms"):
        timed = ", ".join(f"{k} {v['step_ms']} ms" for k, v in rows.items())
        lines.append(f"speed-ups at N={speed.get('n_particles')}: default {speed.get('default_step_ms')} ms; {timed}")
        verdict = f"winner: {speed.get('winner')} (fastest {speed.get('fastest')}, gain {speed.get('gain')}, noise {speed.get('noise')})"
        lines.append(verdict + (f"; adopt: {speed['adoption']}" if speed.get("adoption") else ""))
    goal = r.get("goal_n4")
    if goal:
        lines.append(f"goal (N=4 <= 120 ms, >= 90 % UNet, 5 evals): {'MET' if goal['met'] else 'NOT MET'}")
    return lines


def _fp16(r: dict) -> list[str]:
    lines = [f"fp16 forward latent rel. error: {r.get('latent_forward_rel_err_fp16')}"]
    for scale, row in r.get("sweep", {}).items():
        cells = ", ".join(
            f"{v}: {row[v]['rel_err']:.2e}/{row[v]['flushed_frac']:.3f}"
            for v in ("fp16", "fp16_scaled", "fp32", "fp32_strict")
            if v in row
        )
        lines.append(f"latent grad RMS {scale}: rel err/flushed {cells}")
    for variant, v in r.get("verdict", {}).items():
        lines.append(
            f"{variant}: worst rel err {v['worst_rel_err']:.2e}, flushed {v['worst_flushed_frac']}, "
            f"goal {'MET' if v['meets_goal'] else 'NOT MET'}"
        )
    timing = r.get("parts", {}).get("timing", {}).get("ms_per_view")
    if timing:
        lines.append("ms per view (encode + backward): " + ", ".join(f"{k} {v}" for k, v in timing.items()))
    return lines


def _nerf_rows(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        where = f"{row.get('resolution')} px N={row.get('n')} {row.get('mode')}"
        if "error" in row:
            lines.append(f"{where}: {row['error'][:160]}")
            continue
        lines.append(
            f"{where}: step {row['step_s']} s (render {row.get('render_s')}, VAE {row.get('vae_s')}, UNet "
            f"{row.get('unet_s')}, backward {row.get('backward_s')}), peak {row.get('peak_step_mb')} MB"
        )
    return lines


def _projection(r: dict) -> list[str]:
    lines = []
    for row in r.get("projection", []):
        minutes = next((v for k, v in row.items() if k.startswith("projected_")), None)
        goals = ", ".join(f"{k} {v}" for k, v in row.items() if k.endswith("_goal_met"))
        lines.append(f"{row['resolution']} px N={row['n']} {row['mode']}: whole edit ~{minutes} min; {goals}")
    return lines


def _nerf(r: dict) -> list[str]:
    return _nerf_rows(r.get("rows", [])) + _projection(r)


def _splat(r: dict) -> list[str]:
    parts = r.get("parts", {})
    lines = []
    build = parts.get("gsplat_build", {})
    if build:
        lines.append(
            f"gsplat build: {build['status']} {build.get('compile_s', '')} s {build.get('reason', '')}".strip()
        )
    compare = parts.get("compare", {})
    if compare.get("status") == "ok":
        diff = compare.get("diff", {})
        cells = ", ".join(f"{k} {v['max_abs_diff']:.1e}" for k, v in diff.items())
        lines.append(f"ours vs {compare.get('reference')}: max abs diff {cells}")
        lines.append(f"ours (CPU) {compare.get('ours_cpu_ms')} ms, reference {compare.get('reference_ms')} ms")
    elif compare:
        lines.append(f"compare: {compare['status']} {compare.get('reason', '')}")
    step = parts.get("edit_step", {})
    if step:
        lines.append(f"edit step: {step['status']} {step.get('reason', '')}".strip())
    return lines + _nerf_rows(r.get("rows", [])) + _projection(r)


def _2d(r: dict) -> list[str]:
    lines = []
    for case, row in r.get("cases", {}).items():
        if "error" in row:
            lines.append(f"{case}: {row['error'][:160]}")
            continue
        lines.append(
            f"{case}: {row.get('input')}, {row.get('particles_per_step')} particles, step {row.get('step_s')} s, "
            f"UNet share {row.get('unet_share')}, encode {row.get('encode_s')} s, decode {row.get('decode_s')} s, "
            f"peak {row.get('peak_mem_mb')} MB"
        )
    return lines


def _setup(r: dict) -> list[str]:
    keys = ("python", "torch", "gpu", "numpy", "transformers", "bundle_problems", "install", "requirements", "travel")
    lines = []
    for key in keys:
        if key in r:
            value = r[key]
            if key == "requirements" and isinstance(value, dict):
                value = {k: value[k] for k in ("ok", "requirements", "problems", "accepted") if k in value}
            lines.append(f"{key}: {json.dumps(value)[:300]}")
    return lines


FORMATTERS = {"setup": _setup, "core": _core, "fp16": _fp16, "nerf": _nerf, "splat": _splat, "2d": _2d}


def summarise(records: list[dict]) -> str:
    """The summary text of a check's records."""
    out = []
    for r in records:
        head = f"== {r['stage']}: {r['status']} ({r.get('seconds', 0):.0f} s)"
        if r.get("reason"):
            head += f": {r['reason']}"
        out.append(head[:400])
        try:
            out.extend("   " + line for line in FORMATTERS.get(r["stage"], lambda _: [])(r))
        except (KeyError, TypeError, ValueError) as error:  # a partial record must not hide the others
            out.append(f"   (figures incomplete: {type(error).__name__}: {error})")
    return "\n".join(out)


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    print(summarise(read_records(Path(sys.argv[1]))))
