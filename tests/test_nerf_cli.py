"""csd-edit through the command line: ns-train end to end, stock ns-render / ns-export on the result, errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from nerf_fixtures import (
    BIN,
    CPU,
    EDIT_STEPS,
    QUIET,
    SAVE_EVERY,
    ply_vertex_count,
    run_tool,
    synthetic_scene,
    tool_env,
    video_frames,
)

from csd_nerf.nerf.compat import load_checkpoint
from csd_nerf.nerf.source import model_state_from_checkpoint


def _weights(run: Path) -> dict[str, torch.Tensor]:
    checkpoint = sorted((run / "nerfstudio_models").glob("step-*.ckpt"))[-1]
    return model_state_from_checkpoint(load_checkpoint(checkpoint))


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("csd-edit: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def _checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    return model_state_from_checkpoint(load_checkpoint(path))


def test_ns_train_csd_edit_end_to_end(source, edited):
    checkpoints = sorted((edited / "nerfstudio_models").glob("step-*.ckpt"))
    # The step count starts at 0: checkpoints every SAVE_EVERY steps, and the last step's.
    assert [c.name for c in checkpoints] == [f"step-{SAVE_EVERY:09d}.ckpt", f"step-{EDIT_STEPS - 1:09d}.ckpt"]
    before, after = _weights(source), _weights(edited)
    assert set(after) == set(before) - {k for k in before if k.startswith("lpips.")}
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert any(k.startswith("field.") for k in changed)
    assert torch.equal(after["camera_optimizer.pose_adjustment"], before["camera_optimizer.pose_adjustment"])
    appearance = "field.embedding_appearance.embedding.weight"
    assert torch.equal(after[appearance], before[appearance])  # frozen by default
    config = (edited / "config.yml").read_text()
    assert "log2_hashmap_size: 13" in config and "hidden_dim: 16" in config  # read from the source's config.yml
    assert sorted(p.name for p in (edited / "previews").glob("*.png")) == ["step-000000.png", "step-000012.png"]
    log = (edited.parent.parent.parent.parent / "stdout.txt").read_text()
    assert "no meaningful edit" in log and "backprop auto ->" in log


def test_proposal_networks_and_fields_keep_learning_past_the_warm_up(source, edited):
    """Between the checkpoints of steps 12 and 23 (past nerfacto's 10-step warm-up) every proposal-network and
    field tensor the edit trains keeps changing: proposal sampling follows the edit instead of staying at the
    source geometry."""
    before = _weights(source)
    middle = _checkpoint_weights(edited / "nerfstudio_models" / f"step-{SAVE_EVERY:09d}.ckpt")
    last = _checkpoint_weights(edited / "nerfstudio_models" / f"step-{EDIT_STEPS - 1:09d}.ckpt")
    # What the edit trains is what moved in its first 12 steps (buffers such as the aabb never move).
    trained = [k for k in middle if k in before and not torch.equal(middle[k], before[k])]
    proposal = [k for k in trained if k.startswith("proposal_networks.")]
    field = [k for k in trained if k.startswith("field.")]
    assert len(proposal) >= 10 and len(field) >= 5, trained
    assert [k for k in proposal if torch.equal(middle[k], last[k])] == []
    assert [k for k in field if torch.equal(middle[k], last[k])] == []


def test_edited_config_names_its_own_checkpoints_not_the_sources(source, edited):
    """An edit started with --load-step must not leave load_step in its config.yml, or stock ns-render looks for
    that step in the edited run's folder."""
    config = yaml.load((edited / "config.yml").read_text(), Loader=yaml.Loader)
    assert config.load_dir is None and config.load_step is None and config.load_checkpoint is None
    assert config.source_checkpoint == source / "nerfstudio_models" / "step-000000059.ckpt"


def test_edited_checkpoint_loads_with_plain_torch(edited):
    """Written without numpy scalars: readable by torch.load(weights_only=True) with nothing registered."""
    checkpoint = sorted((edited / "nerfstudio_models").glob("step-*.ckpt"))[-1]
    code = "import sys, torch; torch.load(sys.argv[1], weights_only=True)"
    proc = subprocess.run([sys.executable, "-c", code, str(checkpoint)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_stock_ns_render_on_edited_run(base, edited, tmp_path):
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
    assert "InstructPix2Pix" not in proc.stdout + proc.stderr


def test_stock_ns_export_pointcloud_on_edited_run(base, edited, tmp_path):
    proc = run_tool(
        ["ns-export", "pointcloud", "--load-config", str(edited / "config.yml"), "--output-dir", str(tmp_path)]
        + ["--num-points", "1000", "--normal-method", "open3d", "--num-rays-per-batch", "2048"],
        base,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # --num-points 1000 are drawn in batches of --num-rays-per-batch 2048 (observed 1024 and 2048), outliers removed
    assert 200 <= ply_vertex_count(tmp_path / "point_cloud.ply") <= 2048


def test_rendering_an_edited_run_never_loads_the_prior(edited):
    code = (
        "import sys\nfrom pathlib import Path\nfrom nerfstudio.utils.eval_utils import eval_setup\n"
        "_, pipeline, _, _ = eval_setup(Path(sys.argv[1]), test_mode='inference')\n"
        "print(pipeline.editor is None, 'diffusers' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(edited / "config.yml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["True", "False"]


def test_data_alone_edits_the_latest_source_run_of_that_data(base, source, tmp_path):
    scene = synthetic_scene(base)
    outputs = source.parent.parent.parent  # <output-dir>/<experiment>/nerfacto/<timestamp>
    args = ["ns-train", "csd-edit", "--data", str(scene), "--output-dir", str(outputs), "--max-num-iterations", "1"]
    args += ["--pipeline.prompt", "Turn the ball blue", "--pipeline.ip2p-model", "tiny", "--experiment-name", "x"]
    proc = run_tool(args + CPU + QUIET, base, cwd=tmp_path)
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        said = " ".join((proc.stdout + proc.stderr).split())
        assert f"editing the latest nerfacto run of {scene}" in said and "--load-dir chooses another" in said
        edited = list((outputs / "x" / "csd-edit").glob("*/config.yml"))
        assert len(edited) == 1
        config = yaml.load(edited[0].read_text(), Loader=yaml.Loader)
        assert config.source_checkpoint.parent == source / "nerfstudio_models"
    finally:
        shutil.rmtree(outputs / "x", ignore_errors=True)  # never leave a second run beside the source's


def test_data_without_a_trained_run_says_to_train_it_first(base, tmp_path):
    scene = synthetic_scene(base)
    args = ["ns-train", "csd-edit", "--data", str(scene), "--output-dir", str(tmp_path / "outputs")]
    proc = run_tool(args + ["--pipeline.prompt", "x"] + CPU + QUIET, base, cwd=tmp_path)
    line = _one_line_error(proc)
    assert f"train it first (ns-train nerfacto --data {scene})" in line
    assert not (tmp_path / "outputs").exists()


def test_load_dir_without_config_and_data_is_one_line_before_anything_is_written(base, source, tmp_path):
    models = tmp_path / "copied" / "nerfstudio_models"
    shutil.copytree(source / "nerfstudio_models", models)  # no config.yml next to it
    args = ["ns-train", "csd-edit", "--load-dir", str(models), "--pipeline.prompt", "x"]
    proc = run_tool(args + ["--output-dir", str(tmp_path / "outputs")] + CPU + QUIET, base, cwd=tmp_path)
    line = _one_line_error(proc)
    assert "no config.yml next to" in line and "pass --data" in line
    assert not (tmp_path / "outputs").exists()


def _edit_process(base: Path, source: Path, folder: Path, *extra: str) -> subprocess.Popen:
    args = [str(BIN / "ns-train"), "csd-edit", "--load-dir", str(source / "nerfstudio_models")]
    args += ["--output-dir", str(folder / "outputs"), "--max-num-iterations", "500", "--steps-per-save", "400"]
    args += ["--pipeline.prompt", "Turn the ball blue", "--pipeline.ip2p-model", "tiny", *extra] + CPU + QUIET
    return subprocess.Popen(args, cwd=folder, env=tool_env(base), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _signal_when(proc: subprocess.Popen, ready, sig: int) -> str:
    """Send ``sig`` once ``ready()`` holds; returns stderr after the process ended."""
    try:
        deadline = time.monotonic() + 300
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    stderr = stderr.decode()
    assert "Traceback" not in stderr, stderr[-3000:]
    return stderr


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_keeps_the_finished_steps(base, source, tmp_path, sig, status):
    """Ctrl-C (exit 130) and SIGTERM, what timeout, schedulers and closed terminals send (exit 143), alike."""
    proc = _edit_process(base, source, tmp_path, "--pipeline.preview-every", "1")
    # step 3 has started once its preview exists
    stderr = _signal_when(proc, lambda: list(tmp_path.glob("outputs/*/csd-edit/*/previews/step-000003.png")), sig)
    assert proc.returncode == status, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("csd-edit: interrupted")]
    assert len(lines) == 1 and "after" in lines[0] and "saved" in lines[0], stderr[-3000:]
    saved = Path(lines[0].split("saved ", 1)[1])
    assert saved.is_file() and int(saved.stem.split("-")[1]) >= 2
    assert _checkpoint_weights(saved)  # complete and readable


def test_ctrl_c_while_setting_up_exits_130_and_leaves_no_run_folder(base, source, tmp_path):
    """After "Saving config", before the first step: no traceback, exit 130, no folder holding only config.yml."""
    proc = _edit_process(base, source, tmp_path)
    stderr = _signal_when(proc, lambda: list(tmp_path.glob("outputs/*/csd-edit/*/config.yml")), signal.SIGINT)
    assert proc.returncode == 130, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("csd-edit: interrupted")]
    assert len(lines) == 1, stderr[-3000:]
    assert not list(tmp_path.glob("outputs/*/csd-edit/*")), lines


def test_a_prompt_that_is_not_utf8_is_one_line_before_the_config_dump(base, source, tmp_path):
    args = [str(BIN / "ns-train"), "csd-edit", "--load-dir", str(source / "nerfstudio_models")]
    args += ["--output-dir", str(tmp_path / "outputs"), "--pipeline.prompt"]
    proc = subprocess.run(
        [*map(os.fsencode, args), b"Turn it \xff red", *map(os.fsencode, CPU + QUIET)],
        cwd=tmp_path,
        env=tool_env(base) | {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
        capture_output=True,
        text=True,
        errors="replace",
    )
    line = _one_line_error(proc)
    assert proc.returncode == 2 and "--pipeline.prompt is not valid UTF-8" in line and "0xff" in line
    assert "TrainerConfig(" not in proc.stdout + proc.stderr  # before nerfstudio's config dump
    assert not (tmp_path / "outputs").exists()


def test_missing_checkpoint_is_a_one_line_error(base, tmp_path):
    args = ["ns-train", "csd-edit", "--load-dir", str(tmp_path / "nope"), "--pipeline.prompt", "x"]
    proc = run_tool(args + ["--output-dir", str(tmp_path)] + CPU + QUIET, base, cwd=tmp_path)
    assert "is not a folder" in _one_line_error(proc)
    assert not list(tmp_path.glob("*/csd-edit"))  # nothing written


def test_incompatible_checkpoint_is_a_one_line_error(base, source, tmp_path):
    args = ["ns-train", "csd-edit", "--load-dir", str(source / "nerfstudio_models"), "--pipeline.prompt", "x"]
    # The source was trained with 2**13 entries (tiny preset); 2**12 cannot hold its weights.
    args += ["--pipeline.model.log2-hashmap-size", "12", "--pipeline.ip2p-model", "tiny", "--max-num-iterations", "1"]
    proc = run_tool(args + ["--output-dir", str(tmp_path)] + CPU + QUIET, base, cwd=tmp_path)
    line = _one_line_error(proc)
    assert "does not fit this model" in line and "hash_table" in line


def test_broken_plugin_does_not_break_ns_train():
    code = (
        "import sys\nsys.modules['csd_nerf.nerf.pipeline'] = None  # simulate a broken install\n"
        "from nerfstudio.configs.method_configs import all_methods, all_descriptions\n"
        "print('nerfacto' in all_methods, 'csd-edit' in all_methods, all_descriptions['csd-edit'].startswith('[unavailable'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-3:] == ["True", "True", "True"]


def test_stock_ns_export_reads_a_stock_nerfacto_checkpoint(base, source, tmp_path):
    """torch >= 2.6 refuses nerfstudio's checkpoints; the installed plugin makes stock commands read them."""
    proc = run_tool(
        ["ns-export", "pointcloud", "--load-config", str(source / "config.yml"), "--output-dir", str(tmp_path)]
        + ["--num-points", "1000", "--normal-method", "open3d", "--num-rays-per-batch", "2048"],
        base,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # --num-points 1000 are drawn in batches of --num-rays-per-batch 2048 (observed 1024 and 2048), outliers removed
    assert 200 <= ply_vertex_count(tmp_path / "point_cloud.ply") <= 2048
