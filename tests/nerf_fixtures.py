"""Shared, train-once artefacts for the nerfstudio tests: a synthetic scene, a stock nerfacto run, an edited run.

Each artefact is built once per test session under pytest's base temp folder (guarded by a file lock, so
several modules or xdist workers reuse it) and only read afterwards.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from csd_nerf.testing.offline import offline_tool_env
from csd_nerf.testing.presets import CPU_MACHINE, QUIET, nerfacto_cpu_training
from csd_nerf.testing.synthetic import SyntheticSceneConfig, make_synthetic_scene

BIN = Path(sys.executable).parent
CPU = CPU_MACHINE
SOURCE_STEPS = 60
EDIT_STEPS = 24
"""Past nerfacto's 10-step warm-up, with a checkpoint at step 12 and the final one at step 23."""
SAVE_EVERY = 12


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _once(folder: Path, build: Callable[[Path], None]) -> Path:
    """Build ``folder`` once (atomically, under a lock) and return it."""
    with _locked(folder.with_name(folder.name + ".lock")):
        if not (folder / ".done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            (folder / ".done").touch()
    return folder


def tool_env(base: Path) -> dict[str, str]:
    """Environment for ns-* subprocesses: offline, AlexNet placeholder, ffmpeg on PATH, no viewer."""
    env = offline_tool_env(base / "tools")
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("CSD_NERF_CACHE", str(base / "csd_cache"))
    return env


def run_tool(args: list[str], base: Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run an ns-* command of this environment; output captured as text."""
    exe = str(BIN / args[0])
    return subprocess.run(
        [exe, *args[1:]], cwd=cwd, env=tool_env(base), capture_output=True, text=True, timeout=timeout, check=False
    )


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        raise AssertionError(f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def synthetic_scene(base: Path) -> Path:
    """24 views of 32x32 px in nerfstudio format."""
    return _once(
        base / "scene", lambda d: make_synthetic_scene(d, SyntheticSceneConfig(num_views=24, width=32, height=32))
    )


def single_run(outputs: Path, method: str) -> Path:
    """The one run folder (holding config.yml) of ``method`` under an ns-train output folder."""
    runs = sorted(outputs.glob(f"*/{method}/*/config.yml"))
    assert len(runs) == 1, f"expected one {method} run under {outputs}, found {runs}"
    return runs[0].parent


def source_run(base: Path) -> Path:
    """A stock ``ns-train nerfacto`` run (tiny model, CPU) of the synthetic scene; returns the run folder."""
    scene = synthetic_scene(base)

    def build(folder: Path) -> None:
        args = ["ns-train", "nerfacto", "--data", str(scene), "--output-dir", str(folder / "outputs")]
        # nerfacto's own pose refinement on: the edit must keep the source's pose corrections (frozen).
        args += QUIET + nerfacto_cpu_training(SOURCE_STEPS, rays_per_batch=512, exact_poses=False)
        _check(run_tool(args, base, cwd=folder), "ns-train nerfacto")

    return single_run(_once(base / "source", build) / "outputs", "nerfacto")


def edited_run(base: Path) -> Path:
    """``ns-train csd-edit`` with the tiny prior on :func:`source_run`, as a user runs it: past the warm-up, with an
    explicit ``--load-step`` and intermediate checkpoints kept; returns the run folder."""
    source = source_run(base)

    def build(folder: Path) -> None:
        args = ["ns-train", "csd-edit", "--load-dir", str(source / "nerfstudio_models")]
        args += ["--load-step", str(SOURCE_STEPS - 1)]
        args += ["--output-dir", str(folder / "outputs"), "--max-num-iterations", str(EDIT_STEPS)]
        args += ["--pipeline.prompt", "Turn the ball blue", "--pipeline.ip2p-model", "tiny"]
        args += ["--pipeline.preview-every", "12", "--steps-per-save", str(SAVE_EVERY)]
        args += ["--save-only-latest-checkpoint", "False"]
        args += ["--pipeline.num-particles", "2", "--pipeline.render-resolution", "16"]  # small: 2-core CI
        args += CPU + QUIET
        proc = run_tool(args, base, cwd=folder)
        _check(proc, "ns-train csd-edit")
        (folder / "stdout.txt").write_text(proc.stdout + proc.stderr)

    return single_run(_once(base / "edited", build) / "outputs", "csd-edit")


def session_base(tmp_path_factory) -> Path:
    """The per-session folder the shared artefacts live in."""
    base = tmp_path_factory.getbasetemp()
    # xdist workers each get their own basetemp below a shared parent; share across them.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return base / "nerf"


def build_pipeline(source: Path, **pipeline_options):
    """An in-process csd-edit pipeline (CPU, no prior loaded) with the source run's weights."""
    import copy

    from csd_nerf.method_configs.csd_edit import csd_edit_method
    from csd_nerf.nerf.source import find_source, inherit_source_config, load_model_weights

    config = copy.deepcopy(csd_edit_method.config)
    config.load_dir = source / "nerfstudio_models"
    config.machine.device_type = "cpu"
    config.pipeline.model.implementation = "torch"
    for key, value in pipeline_options.items():
        setattr(config.pipeline, key, value)
    run = find_source(config.load_dir, None, None)
    inherit_source_config(config, run, argv=[])
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    load_model_weights(pipeline.model, run.checkpoint)
    return pipeline


def build_splat_pipeline(source: Path, **pipeline_options):
    """An in-process csd-edit-splat pipeline (CPU, no prior loaded) with the splat source run's Gaussians."""
    import copy

    from csd_nerf.method_configs.csd_edit import csd_edit_splat_method
    from csd_nerf.nerf.source import find_source, inherit_source_config, load_model_weights

    config = copy.deepcopy(csd_edit_splat_method.config)
    config.machine.device_type = "cpu"
    for key, value in pipeline_options.items():
        setattr(config.pipeline, key, value)
    run = find_source(source / "nerfstudio_models", None, None)
    inherit_source_config(config, run, argv=[])
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    load_model_weights(pipeline.model, run.checkpoint)
    return pipeline


SPLAT_SOURCE_STEPS = 100
SPLAT_EDIT_STEPS = 3


def splat_source_run(base: Path) -> Path:
    """A ``ns-train splatfacto-cpu`` run of the synthetic scene (initialised from its point cloud)."""
    scene = synthetic_scene(base)

    def build(folder: Path) -> None:
        args = ["ns-train", "splatfacto-cpu", "--data", str(scene), "--output-dir", str(folder / "outputs")]
        args += QUIET + ["--max-num-iterations", str(SPLAT_SOURCE_STEPS), "--steps-per-save", str(SPLAT_SOURCE_STEPS)]
        _check(run_tool(args, base, cwd=folder), "ns-train splatfacto-cpu")

    return single_run(_once(base / "splat_source", build) / "outputs", "splatfacto-cpu")


def splat_edited_run(base: Path) -> Path:
    """``ns-train csd-edit-splat`` with the tiny prior for a few steps on :func:`splat_source_run`."""
    source = splat_source_run(base)

    def build(folder: Path) -> None:
        args = ["ns-train", "csd-edit-splat", "--load-dir", str(source / "nerfstudio_models")]
        args += ["--output-dir", str(folder / "outputs"), "--max-num-iterations", str(SPLAT_EDIT_STEPS)]
        args += ["--pipeline.prompt", "Turn the ball blue", "--pipeline.ip2p-model", "tiny"]
        args += ["--pipeline.num-particles", "2", "--pipeline.preview-every", "2", "--machine.device-type", "cpu"]
        args += QUIET
        proc = run_tool(args, base, cwd=folder)
        _check(proc, "ns-train csd-edit-splat")
        (folder / "stdout.txt").write_text(proc.stdout + proc.stderr)

    return single_run(_once(base / "splat_edited", build) / "outputs", "csd-edit-splat")


def dataparser_source_run(base: Path, method: str) -> Path:
    """A run trained as ``ns-train METHOD --output-dir outputs nerfstudio-data --data scene``: the data given to the
    dataparser subcommand, both paths relative to the folder it ran in (a copy of the synthetic scene there)."""
    scene = synthetic_scene(base)

    def build(folder: Path) -> None:
        shutil.copytree(scene, folder / "scene")
        args = ["ns-train", method, *QUIET, "--output-dir", "outputs"]
        if method == "nerfacto":
            args += nerfacto_cpu_training(3, rays_per_batch=256)
        else:
            args += ["--machine.device-type", "cpu", "--max-num-iterations", "3", "--steps-per-save", "3"]
        _check(run_tool([*args, "nerfstudio-data", "--data", "scene"], base, cwd=folder), f"ns-train {method}")

    return single_run(_once(base / f"dataparser_{method}", build) / "outputs", method)


CONVERGENCE_SOURCE_STEPS = 500


def convergence_source_run(base: Path) -> Path:
    """nerfacto fitted well enough to edit (500 steps; the shared source's 60 leave it at ~12 dB) on the synthetic
    scene, a quarter of the views held out to measure on: trained the way scripts/bench_convergence.py does."""
    from csd_nerf.testing.convergence import train_source

    scene = synthetic_scene(base)

    def build(folder: Path) -> None:
        train_source(scene, folder / "outputs", CONVERGENCE_SOURCE_STEPS, "nerfacto", lambda m: None, 0.25)

    return single_run(_once(base / "convergence_source", build) / "outputs", "nerfacto")


def video_frames(path: Path):
    """The decoded frames of a video file, ``[T, H, W, 3]`` uint8."""
    import av
    import numpy as np

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def ply_vertex_count(path: Path) -> int:
    """The vertex count a .ply header declares (the header is text, whatever the body's format)."""
    header = path.read_bytes()[:4000].split(b"end_header")[0].decode()
    return int(next(line.split()[-1] for line in header.splitlines() if line.startswith("element vertex")))


IDU_EDIT_STEPS = 6
IDU_EVERY = 4
IDU_VIEWS = 3
"""The idu run: updates at steps 0 and 4 (3 views each, 6 distinct: drawn without replacement), checkpoints at
steps 3 and 5."""


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path."""
    import hashlib

    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def idu_edited_run(base: Path) -> Path:
    """``ns-train csd-edit --pipeline.mode idu`` with the tiny prior on :func:`source_run`: two dataset updates, two
    checkpoints; the data folder's digests before the run are kept beside it (``scene_digests.json``)."""
    import json

    source = source_run(base)
    scene = synthetic_scene(base)

    def build(folder: Path) -> None:
        (folder / "scene_digests.json").write_text(json.dumps(file_digests(scene)))
        args = ["ns-train", "csd-edit", "--load-dir", str(source / "nerfstudio_models")]
        args += ["--output-dir", str(folder / "outputs"), "--max-num-iterations", str(IDU_EDIT_STEPS)]
        args += ["--pipeline.prompt", "Turn the ball blue", "--pipeline.ip2p-model", "tiny"]
        args += ["--pipeline.mode", "idu", "--pipeline.idu-every", str(IDU_EVERY)]
        args += ["--pipeline.idu-views", str(IDU_VIEWS), "--pipeline.idu-steps", "2"]
        args += ["--pipeline.render-resolution", "16", "--pipeline.preview-every", "4"]
        args += ["--pipeline.datamanager.train-num-rays-per-batch", "256"]
        args += ["--steps-per-save", "3", "--save-only-latest-checkpoint", "False"]
        args += CPU + QUIET
        proc = run_tool(args, base, cwd=folder)
        _check(proc, "ns-train csd-edit --pipeline.mode idu")
        (folder / "stdout.txt").write_text(proc.stdout + proc.stderr)

    return single_run(_once(base / "idu_edited", build) / "outputs", "csd-edit")
