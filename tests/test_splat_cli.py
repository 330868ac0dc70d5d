"""Gaussian splats on a CPU: splatfacto-cpu trains the source, csd-edit-splat edits it, stock ns-export and
ns-render read the result (all through the command line, offline)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from nerf_fixtures import (
    BIN,
    QUIET,
    SPLAT_EDIT_STEPS,
    ply_vertex_count,
    run_tool,
    tool_env,
    video_frames,
)

from csd_nerf.nerf.compat import load_checkpoint
from csd_nerf.nerf.source import model_state_from_checkpoint

REPRESENTATION = "splat"
GAUSSIAN_PARAMS = ("means", "scales", "quats", "opacities", "features_dc", "features_rest")


def _checkpoint(run: Path) -> Path:
    return sorted((run / "nerfstudio_models").glob("step-*.ckpt"))[-1]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return model_state_from_checkpoint(load_checkpoint(_checkpoint(run)))


def test_csd_edit_splat_changes_every_gaussian_parameter(source, edited):
    assert _checkpoint(edited).name == f"step-{SPLAT_EDIT_STEPS - 1:09d}.ckpt"
    before, after = _weights(source), _weights(edited)
    for name in GAUSSIAN_PARAMS:
        key = f"gauss_params.{name}"
        assert after[key].shape == before[key].shape  # densification is off by default
        if name != "features_rest":  # the tiny prior's SH-rest gradients can be tiny; the rest must move
            assert not torch.equal(after[key], before[key]), name
    log = (edited.parent.parent.parent.parent / "stdout.txt").read_text()
    assert "no meaningful edit" in log and "training views rendered" in log
    assert sorted(p.name for p in (edited / "previews").glob("*.png")) == ["step-000000.png", "step-000002.png"]


def test_a_checkpoint_with_another_number_of_gaussians_loads(base, source, tmp_path):
    """Loads whatever the number of Gaussians in the checkpoint (the model is built from the point cloud)."""
    import copy

    from csd_nerf.method_configs.csd_edit import csd_edit_splat_method
    from csd_nerf.nerf.source import find_source, inherit_source_config, load_model_weights

    state = load_checkpoint(_checkpoint(source))
    for name in GAUSSIAN_PARAMS:
        key = f"_model.gauss_params.{name}"
        state["pipeline"][key] = state["pipeline"][key][:1234].clone()
    trimmed = tmp_path / "step-000000001.ckpt"
    torch.save(state, trimmed)

    config = copy.deepcopy(csd_edit_splat_method.config)
    config.machine.device_type = "cpu"
    config.pipeline.prompt = "x"
    inherit_source_config(config, find_source(source / "nerfstudio_models", None, None), argv=[])
    pipeline = config.pipeline.setup(device="cpu", test_mode="inference")
    assert pipeline.model.means.shape[0] != 1234
    load_model_weights(pipeline.model, trimmed)
    assert pipeline.model.means.shape[0] == 1234 and pipeline.model.features_rest.shape[0] == 1234


def test_stock_ns_export_gaussian_splat_on_the_edited_run(base, edited, tmp_path):
    proc = run_tool(
        ["ns-export", "gaussian-splat", "--load-config", str(edited / "config.yml"), "--output-dir", str(tmp_path)],
        base,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = (tmp_path / "splat.ply").read_bytes()[:2000].split(b"end_header")[0].decode()
    assert ply_vertex_count(tmp_path / "splat.ply") == _weights(edited)["gauss_params.means"].shape[0]
    assert "property float opacity" in header and "property float rot_0" in header and "f_dc_0" in header


def test_stock_ns_render_on_the_edited_run_without_the_prior(base, edited, tmp_path):
    video = tmp_path / "edit.mp4"
    proc = run_tool(
        ["ns-render", "interpolate", "--load-config", str(edited / "config.yml"), "--output-path", str(video)]
        + ["--interpolation-steps", "2", "--frame-rate", "4"],
        base,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    frames = video_frames(video)
    assert len(frames) >= 2 and frames.shape[1:] == (32, 32, 3) and frames.std() > 1  # an image, not a blank
    code = (
        "import sys\nfrom pathlib import Path\nfrom nerfstudio.utils.eval_utils import eval_setup\n"
        "_, pipeline, _, _ = eval_setup(Path(sys.argv[1]), test_mode='inference')\n"
        "print(pipeline.editor is None, 'diffusers' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(edited / "config.yml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["True", "False"]


def test_two_runs_started_together_into_one_folder_keep_both_results(base, source, tmp_path):
    """Same --output-dir, same timestamp (what two runs started in the same second get): two run folders."""
    args = [str(BIN / "ns-train"), "csd-edit-splat", "--load-dir", str(source / "nerfstudio_models")]
    args += ["--output-dir", str(tmp_path / "outputs"), "--experiment-name", "e", "--timestamp", "same-second"]
    args += ["--pipeline.prompt", "Turn the ball blue", "--pipeline.ip2p-model", "tiny", "--max-num-iterations", "1"]
    args += ["--pipeline.num-particles", "1", "--pipeline.render-resolution", "16", "--machine.device-type", "cpu"]
    procs = [
        subprocess.Popen(args + QUIET, cwd=tmp_path, env=tool_env(base), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err.decode()[-2000:] for _, err in outs]
    runs = sorted(p.name for p in (tmp_path / "outputs" / "e" / "csd-edit-splat").iterdir())
    assert runs == ["same-second", "same-second-2"]
    for run in runs:
        folder = tmp_path / "outputs" / "e" / "csd-edit-splat" / run
        assert (folder / "config.yml").is_file() and list((folder / "nerfstudio_models").glob("step-*.ckpt"))
