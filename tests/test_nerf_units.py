"""csd-edit's nerfstudio glue in process: deferred backpropagation, checkpoint loading, source-run handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from nerf_fixtures import build_pipeline, session_base, source_run, synthetic_scene

from csd_nerf.nerf.compat import load_checkpoint, to_builtin
from csd_nerf.nerf.errors import CSDEditError
from csd_nerf.nerf.source import (
    SourceError,
    cli_overrides,
    find_source,
    inherit_source_config,
    load_model_weights,
    model_state_from_checkpoint,
)
from csd_nerf.nerf.views import render_size


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return source_run(session_base(tmp_path_factory))


@pytest.fixture(scope="module")
def pipeline(source):
    return build_pipeline(source)


def _checkpoint(run: Path) -> Path:
    return sorted((run / "nerfstudio_models").glob("step-*.ckpt"))[-1]


# --- the synthetic scene -------------------------------------------------------------------------------------


def test_synthetic_scene_is_nerfstudio_format(tmp_path_factory):
    scene = synthetic_scene(session_base(tmp_path_factory))
    meta = json.loads((scene / "transforms.json").read_text())
    assert len(meta["frames"]) == 24 and meta["w"] == meta["h"] == 32
    for frame in meta["frames"]:
        assert (scene / frame["file_path"]).is_file()
        assert len(frame["transform_matrix"]) == 4


# --- render sizes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, cap, expected",
    [((1080, 1920), 512, (288, 512)), ((32, 32), 512, (32, 32)), ((60, 90), 0, (64, 88)), ((3, 5), 512, (8, 8))],
)
def test_render_size_caps_long_side_and_snaps_to_multiples_of_8(size, cap, expected):
    assert render_size(*size, cap) == expected


# --- deferred backpropagation ----------------------------------------------------------------------------------


def _parameter_grads(pipeline, tiny_guidance, backprop: str, upstream: torch.Tensor, ids: list[int]):
    from csd_nerf.nerf.deferred import ViewRenderer
    from csd_nerf.nerf.particles import NerfParticles
    from csd_nerf.nerf.views import TrainViews

    model = pipeline.model
    model.train()
    model.zero_grad(set_to_none=True)
    views = TrainViews(pipeline.datamanager.train_dataset, 32)
    # 300-ray chunks do not divide 32x32 images: chunk boundaries fall inside views.
    renderer = ViewRenderer(model, views.cameras, chunk=300)
    particles = NerfParticles(renderer, views, tiny_guidance, backprop=backprop, preservation_weight=0.5, seed=3)
    latents = particles.latents(ids)
    latents.backward(gradient=upstream)
    timings = particles.backpropagate()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, particles.last_renders, timings.losses


def test_deferred_backprop_matches_direct_backprop(pipeline, tiny_guidance):
    ids = [0, 5]
    upstream = torch.randn(len(ids), 4, 4, 4, generator=torch.Generator().manual_seed(0))
    direct, renders_direct, losses_direct = _parameter_grads(pipeline, tiny_guidance, "direct", upstream, ids)
    deferred, renders_deferred, losses_deferred = _parameter_grads(pipeline, tiny_guidance, "deferred", upstream, ids)
    torch.testing.assert_close(renders_deferred, renders_direct)
    assert set(direct) == set(deferred) and len(direct) > 5
    for name in direct:
        torch.testing.assert_close(deferred[name], direct[name], rtol=1e-4, atol=1e-5, msg=name)
    assert any(g.abs().sum() > 0 for g in direct.values())
    assert set(losses_direct) == set(losses_deferred) >= {"interlevel_loss", "distortion_loss", "preservation_loss"}
    for name in losses_direct:
        assert losses_deferred[name] == pytest.approx(losses_direct[name], rel=1e-4)


def test_source_poses_stay_frozen(pipeline):
    assert "camera_opt" not in pipeline.model.get_param_groups()
    assert not any(p.requires_grad for p in pipeline.model.camera_optimizer.parameters())


# --- checkpoints -------------------------------------------------------------------------------------------------


def test_stock_checkpoint_loads_weights_only(source, pipeline):
    state = load_checkpoint(_checkpoint(source))  # weights_only=True under torch >= 2.6
    weights = model_state_from_checkpoint(state)
    assert weights and not any(k.startswith("lpips.") for k in weights)
    assert any(k.startswith("lpips.") for k in (k[len("_model.") :] for k in state["pipeline"]))
    own = pipeline.model.state_dict()
    for key, value in weights.items():
        torch.testing.assert_close(own[key], value, msg=key)


def test_plugin_import_lets_plain_torch_load_read_stock_checkpoints(source):
    code = (
        "import sys, torch\n"
        "try:\n    torch.load(sys.argv[1], weights_only=True)\nexcept Exception:\n    print('refused')\n"
        "import method_configs.csd_edit\n"
        "torch.load(sys.argv[1], weights_only=True)\nprint('loaded')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(_checkpoint(source))], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["refused", "loaded"]


def test_sanitised_checkpoints_need_no_extra_globals(source, tmp_path):
    state = load_checkpoint(_checkpoint(source))
    path = tmp_path / "clean.ckpt"
    torch.save(to_builtin(state), path)
    code = "import sys, torch; s = torch.load(sys.argv[1], weights_only=True); print(type(s['step']).__name__)"
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_load_model_weights_names_the_difference(source, pipeline):
    checkpoint = _checkpoint(source)
    state = load_checkpoint(checkpoint)
    key = next(k for k in state["pipeline"] if k.endswith("field.mlp_base.model.0.hash_table"))
    state["pipeline"][key] = state["pipeline"][key][:-7]
    broken = checkpoint.parent.parent.parent / "broken.ckpt"
    torch.save(state, broken)
    with pytest.raises(SourceError) as info:
        load_model_weights(pipeline.model, broken)
    message = str(info.value)
    assert "\n" not in message and "hash_table" in message and "does not fit" in message


def test_tcnn_checkpoint_on_torch_model_says_which_implementation(source, pipeline, tmp_path):
    state = load_checkpoint(_checkpoint(source))
    state["pipeline"] = {k: v for k, v in state["pipeline"].items() if "mlp_base" not in k}
    state["pipeline"]["_model.field.mlp_base.params"] = torch.zeros(10)
    torch.save(state, tmp_path / "tcnn.ckpt")
    with pytest.raises(SourceError, match="implementation tcnn"):
        load_model_weights(pipeline.model, tmp_path / "tcnn.ckpt")


def test_unreadable_checkpoint(tmp_path, pipeline):
    (tmp_path / "step-000000001.ckpt").write_text("not a checkpoint")
    with pytest.raises(SourceError, match="cannot read checkpoint"):
        load_model_weights(pipeline.model, tmp_path / "step-000000001.ckpt")


# --- the source run ------------------------------------------------------------------------------------------------


def test_find_source_errors(tmp_path, source):
    with pytest.raises(SourceError, match="--load-dir outputs/"):
        find_source(None, None, None)
    with pytest.raises(SourceError, match="is not a folder"):
        find_source(tmp_path / "missing", None, None)
    with pytest.raises(SourceError, match="no checkpoint"):
        find_source(tmp_path, None, None)
    with pytest.raises(SourceError, match="does not exist"):
        find_source(source / "nerfstudio_models", 12345, None)
    found = find_source(None, None, _checkpoint(source))
    assert found.config_path == source / "config.yml" and found.config is not None


def test_cli_flags_win_over_the_source_config(source):
    import copy

    from method_configs.csd_edit import csd_edit_method

    run = find_source(source / "nerfstudio_models", None, None)
    config = copy.deepcopy(csd_edit_method.config)
    config.pipeline.model.hidden_dim = 99
    changed = inherit_source_config(config, run, argv=["--pipeline.model.hidden-dim", "99", "--data", "x"])
    assert config.pipeline.model.hidden_dim == 99  # given on the command line
    assert config.pipeline.model.log2_hashmap_size == 12 and "log2_hashmap_size" in changed  # from config.yml
    assert (
        config.pipeline.model.eval_num_rays_per_chunk == csd_edit_method.config.pipeline.model.eval_num_rays_per_chunk
    )
    assert config.pipeline.datamanager.data == run.config.pipeline.datamanager.data  # no --data: the source's


def test_cli_overrides_parsing():
    given = cli_overrides(["csd-edit", "--pipeline.model.num-levels=4", "--pipeline.prompt", "x", "nerfstudio-data"])
    assert given == {"pipeline.model.num_levels", "pipeline.prompt"}


def test_source_of_another_method_is_refused(source):
    import copy

    from method_configs.csd_edit import csd_edit_method

    run = find_source(source / "nerfstudio_models", None, None)
    run.config = copy.deepcopy(run.config)
    run.config.method_name = "vanilla-nerf"
    run.config.pipeline.model = SimpleNamespace()
    with pytest.raises(SourceError, match="csd-edit edits nerfacto runs"):
        inherit_source_config(copy.deepcopy(csd_edit_method.config), run, argv=[])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_default_on_a_cpu_machine_names_the_cpu_flags(source):
    import copy

    from csd_nerf.nerf.trainer import resolve_source
    from method_configs.csd_edit import csd_edit_method

    config = copy.deepcopy(csd_edit_method.config)
    config.load_dir = source / "nerfstudio_models"
    config.pipeline.prompt = "Make it snowy"
    with pytest.raises(CSDEditError, match="--machine.device-type cpu"):
        resolve_source(config)


def test_empty_prompt_is_a_clear_error(source):
    import copy

    from csd_nerf.nerf.trainer import resolve_source
    from method_configs.csd_edit import csd_edit_method

    config = copy.deepcopy(csd_edit_method.config)
    config.load_dir = source / "nerfstudio_models"
    config.machine.device_type = "cpu"
    with pytest.raises(CSDEditError, match="--pipeline.prompt"):
        resolve_source(config)
    config.pipeline.model.prompt = "Make it snowy"  # where nerfstudio's --prompt alias puts it
    resolve_source(config)
    assert config.pipeline.prompt == "Make it snowy"


# --- viewer controls -------------------------------------------------------------------------------------------


def test_viewer_controls_apply_valid_values_and_ignore_bad_ones(pipeline):
    from csd_nerf.editor import CSDEditConfig

    pipeline.editor = SimpleNamespace(
        config=CSDEditConfig(prompt="a"), guidance=SimpleNamespace(num_train_timesteps=1000)
    )
    try:
        pipeline.viewer_prompt.value = "Make it snowy"
        pipeline.viewer_guidance_scale.value = 10.0
        pipeline._apply_viewer_controls()
        assert pipeline.editor.config.prompt == "Make it snowy" and pipeline.editor.config.guidance_scale == 10.0
        pipeline.viewer_prompt.value = "   "
        pipeline._apply_viewer_controls()
        assert pipeline.editor.config.prompt == "Make it snowy"
    finally:
        pipeline.editor = None


def test_model_construction_needs_no_lpips_download(pipeline):
    from csd_nerf.nerf.model import LazyLPIPS

    assert isinstance(pipeline.model.lpips, LazyLPIPS)
    assert not any(k.startswith("lpips.") for k in pipeline.model.state_dict())


# --- the demo ------------------------------------------------------------------------------------------------------


def test_demo_never_replaces_a_folder_it_did_not_make(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("csd_demo", Path(__file__).parent.parent / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    (tmp_path / "mine.txt").write_text("keep me")
    assert demo.main(["--output", str(tmp_path)]) == 1
    assert demo.main(["--output", str(tmp_path), "--overwrite"]) == 1
    assert (tmp_path / "mine.txt").read_text() == "keep me"
