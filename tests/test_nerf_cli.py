"""csd-edit through the command line: ns-train end to end, stock ns-render / ns-export on the result, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nerf_fixtures import CPU, EDIT_STEPS, QUIET, edited_run, run_tool, session_base, source_run

from csd_nerf.nerf.compat import load_checkpoint
from csd_nerf.nerf.source import model_state_from_checkpoint


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return session_base(tmp_path_factory)


@pytest.fixture(scope="module")
def source(base) -> Path:
    return source_run(base)


@pytest.fixture(scope="module")
def edited(base) -> Path:
    return edited_run(base)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    checkpoint = sorted((run / "nerfstudio_models").glob("step-*.ckpt"))[-1]
    return model_state_from_checkpoint(load_checkpoint(checkpoint))


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("csd-edit: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def test_ns_train_csd_edit_end_to_end(source, edited):
    checkpoints = sorted((edited / "nerfstudio_models").glob("step-*.ckpt"))
    assert [c.name for c in checkpoints] == [f"step-{EDIT_STEPS - 1:09d}.ckpt"]  # the step count starts at 0
    before, after = _weights(source), _weights(edited)
    assert set(after) == set(before) - {k for k in before if k.startswith("lpips.")}
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert any(k.startswith("field.") for k in changed)
    assert torch.equal(after["camera_optimizer.pose_adjustment"], before["camera_optimizer.pose_adjustment"])
    config = (edited / "config.yml").read_text()
    assert "log2_hashmap_size: 12" in config and "hidden_dim: 16" in config  # read from the source's config.yml
    assert sorted(p.name for p in (edited / "previews").glob("*.png")) == ["step-000000.png", "step-000002.png"]
    log = (edited.parent.parent.parent.parent / "stdout.txt").read_text()
    assert "no meaningful edit" in log


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
    assert video.stat().st_size > 0
    assert "InstructPix2Pix" not in proc.stdout + proc.stderr


def test_stock_ns_export_pointcloud_on_edited_run(base, edited, tmp_path):
    proc = run_tool(
        ["ns-export", "pointcloud", "--load-config", str(edited / "config.yml"), "--output-dir", str(tmp_path)]
        + ["--num-points", "1000", "--normal-method", "open3d", "--num-rays-per-batch", "2048"],
        base,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "point_cloud.ply").stat().st_size > 0


def test_rendering_an_edited_run_never_loads_the_prior(edited):
    code = (
        "import sys\nfrom pathlib import Path\nfrom nerfstudio.utils.eval_utils import eval_setup\n"
        "_, pipeline, _, _ = eval_setup(Path(sys.argv[1]), test_mode='inference')\n"
        "print(pipeline.editor is None, 'diffusers' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(edited / "config.yml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["True", "False"]


def test_missing_checkpoint_is_a_one_line_error(base, tmp_path):
    args = ["ns-train", "csd-edit", "--load-dir", str(tmp_path / "nope"), "--pipeline.prompt", "x"]
    proc = run_tool(args + ["--output-dir", str(tmp_path)] + CPU + QUIET, base, cwd=tmp_path)
    assert "is not a folder" in _one_line_error(proc)
    assert not list(tmp_path.glob("*/csd-edit"))  # nothing written


def test_incompatible_checkpoint_is_a_one_line_error(base, source, tmp_path):
    args = ["ns-train", "csd-edit", "--load-dir", str(source / "nerfstudio_models"), "--pipeline.prompt", "x"]
    args += ["--pipeline.model.log2-hashmap-size", "13", "--pipeline.ip2p-model", "tiny"]
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
    assert (tmp_path / "point_cloud.ply").stat().st_size > 0
