"""Gaussian splats on a CPU: splatfacto-cpu trains the source, csd-edit-splat edits it, stock ns-export and
ns-render read the result (all through the command line, offline)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nerf_fixtures import SPLAT_EDIT_STEPS, run_tool, session_base, splat_edited_run, splat_source_run

from csd_nerf.nerf.compat import load_checkpoint
from csd_nerf.nerf.source import model_state_from_checkpoint

GAUSSIAN_PARAMS = ("means", "scales", "quats", "opacities", "features_dc", "features_rest")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return session_base(tmp_path_factory)


@pytest.fixture(scope="module")
def source(base) -> Path:
    return splat_source_run(base)


@pytest.fixture(scope="module")
def edited(base) -> Path:
    return splat_edited_run(base)


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
    count = int(next(line.split()[-1] for line in header.splitlines() if line.startswith("element vertex")))
    assert count == _weights(edited)["gauss_params.means"].shape[0]
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
    assert video.stat().st_size > 0
    code = (
        "import sys\nfrom pathlib import Path\nfrom nerfstudio.utils.eval_utils import eval_setup\n"
        "_, pipeline, _, _ = eval_setup(Path(sys.argv[1]), test_mode='inference')\n"
        "print(pipeline.editor is None, 'diffusers' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(edited / "config.yml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["True", "False"]
