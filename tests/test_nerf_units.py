"""csd-edit's nerfstudio glue in process: deferred backpropagation, checkpoint loading, source-run handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from nerf_fixtures import build_pipeline, session_base, synthetic_scene

from csd_nerf.errors import SettingError
from csd_nerf.nerf.compat import load_checkpoint, to_builtin
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
    "size, cap, factor, expected",
    [
        ((1080, 1920), 512, 8, (288, 512)),
        ((32, 32), 512, 8, (32, 32)),
        ((60, 90), 0, 8, (64, 88)),
        ((3, 5), 512, 8, (8, 8)),
        ((60, 90), 0, 16, (64, 96)),
    ],
)
def test_render_size_caps_long_side_and_snaps_to_the_latent_factor(size, cap, factor, expected):
    assert render_size(*size, cap, factor) == expected


# --- deferred backpropagation ----------------------------------------------------------------------------------


def _advance_to(model, step: int, since_update: int) -> None:
    """Put the model's proposal schedule where a run is at ``step``, ``since_update`` steps after its last update,
    through the same callback the trainer runs after every iteration."""
    sampler = model.proposal_sampler
    sampler._steps_since_update = since_update - 1
    sampler.step_cb(step - 1)


def _parameter_grads(pipeline, guidance, backprop: str, upstream: torch.Tensor, ids: list[int], at=(0, 0)):
    from csd_nerf.nerf.deferred import ViewRenderer
    from csd_nerf.nerf.scene import NerfScene
    from csd_nerf.nerf.views import TrainViews

    model = pipeline.model
    model.train()
    model.zero_grad(set_to_none=True)
    _advance_to(model, *at)
    views = TrainViews(pipeline.datamanager.train_dataset, 32, guidance.latent_factor)
    # 300-ray chunks do not divide 32x32 images: chunk boundaries fall inside views.
    renderer = ViewRenderer(model, views.cameras, chunk=300)
    scene = NerfScene(renderer, views, guidance, backprop=backprop, preservation_weight=0.5, seed=3)
    latents = scene.latents(ids)
    losses = scene.backward(latents, upstream)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, scene.last_renders, losses, model.proposal_sampler._steps_since_update


@pytest.mark.parametrize(
    "at, proposals_learn",
    [((0, 0), True), ((1500, 40), True), ((1500, 1), False)],
    ids=["first-step", "step-1500-update-due", "step-1500-no-update"],
)
def test_deferred_backprop_matches_direct_backprop(pipeline, tiny_guidance, at, proposals_learn):
    """Same gradients in every parameter, at the start and far into a run, on steps that do and do not update
    nerfacto's proposal networks; when an update is due, every re-rendered chunk trains them."""
    ids = [0, 5]
    upstream = torch.randn(len(ids), 4, 4, 4, generator=torch.Generator().manual_seed(0))
    direct, renders_direct, losses_direct, since_d = _parameter_grads(
        pipeline, tiny_guidance, "direct", upstream, ids, at
    )
    deferred, renders_deferred, losses_deferred, since_f = _parameter_grads(
        pipeline, tiny_guidance, "deferred", upstream, ids, at
    )
    torch.testing.assert_close(renders_deferred, renders_direct)
    assert set(direct) == set(deferred) and len(direct) > 5
    for name in direct:
        torch.testing.assert_close(deferred[name], direct[name], rtol=1e-4, atol=1e-5, msg=name)
    proposal = {n: g for n, g in deferred.items() if n.startswith("proposal_networks.")}
    assert bool(proposal) == proposals_learn and all(g.abs().sum() > 0 for g in proposal.values())
    assert any(g.abs().sum() > 0 for n, g in deferred.items() if n.startswith("field."))
    assert since_d == since_f == (0 if proposals_learn else at[1])  # the update is spent once per step
    assert set(losses_direct) == set(losses_deferred) >= {"interlevel_loss", "distortion_loss", "preservation_loss"}
    for name in losses_direct:
        assert losses_deferred[name] == pytest.approx(losses_direct[name], rel=1e-4)


@pytest.mark.parametrize("backprop", ["direct", "deferred"])
def test_a_float16_overflow_leaves_every_field_parameter_finite_and_the_edit_going(pipeline, backprop):
    """An injected overflow (a gradient scale far past float16's range) in the VAE backward of a real edit step:
    the step is skipped, no parameter moves or turns NaN/inf under Adam, and later steps edit again."""
    from csd_nerf.editor import CSDEditConfig, CSDEditor
    from csd_nerf.guidance import GuidanceConfig
    from csd_nerf.nerf.deferred import ViewRenderer
    from csd_nerf.nerf.scene import NerfScene
    from csd_nerf.nerf.views import TrainViews

    half = GuidanceConfig(model="tiny", dtype="float16").setup()
    half.gradient_headroom = 2.0**17  # scaled gradients above float16's 65504: inf in the VAE backward
    model = pipeline.model
    model.train()
    views = TrainViews(pipeline.datamanager.train_dataset, 16, half.latent_factor)
    scene = NerfScene(ViewRenderer(model, views.cameras, chunk=256), views, half, backprop=backprop)
    editor = CSDEditor(half, CSDEditConfig(prompt="Make it snowy", num_particles=2))
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trained, lr=1e-2)
    before = [p.detach().clone() for p in trained]
    outcomes = []
    for _ in range(40):
        optimizer.zero_grad(set_to_none=True)
        stats = editor.step(scene)
        optimizer.step()
        outcomes.append(stats.skipped)
        assert all(torch.isfinite(p).all() for p in trained)
        if not stats.skipped:
            break
        assert all(torch.equal(p, b) for p, b in zip(trained, before, strict=True))
    assert outcomes[0] and not outcomes[-1] and editor.skipped_steps == len(outcomes) - 1, outcomes
    assert any(not torch.equal(p, b) for p, b in zip(trained, before, strict=True))
    with torch.no_grad():  # the module-scoped pipeline is shared: put the source weights back
        for p, b in zip(trained, before, strict=True):
            p.copy_(b)


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
        "import csd_nerf.method_configs.csd_edit\n"
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


def test_unreadable_checkpoint(tmp_path, pipeline, source):
    (tmp_path / "step-000000001.ckpt").write_text("not a checkpoint")
    truncated = tmp_path / "step-000000002.ckpt"
    truncated.write_bytes(_checkpoint(source).read_bytes()[:5000])
    for path in (tmp_path / "step-000000001.ckpt", truncated):
        with pytest.raises(SourceError, match="not a valid checkpoint \\(corrupt or truncated\\)") as info:
            load_model_weights(pipeline.model, path)
        assert "weights_only" not in str(info.value) and "\n" not in str(info.value)


# --- the source run ------------------------------------------------------------------------------------------------


def test_find_source_errors(tmp_path, source):
    with pytest.raises(SourceError, match="--load-dir outputs/"):
        find_source(None, None, None)
    with pytest.raises(SourceError, match="train it first \\(ns-train nerfacto --data"):
        find_source(None, None, None, data=tmp_path, output_dir=tmp_path)
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

    from csd_nerf.method_configs.csd_edit import csd_edit_method

    run = find_source(source / "nerfstudio_models", None, None)
    config = copy.deepcopy(csd_edit_method.config)
    config.pipeline.model.hidden_dim = 99
    changed = inherit_source_config(config, run, argv=["--pipeline.model.hidden-dim", "99", "--data", "x"])
    assert config.pipeline.model.hidden_dim == 99  # given on the command line
    assert config.pipeline.model.log2_hashmap_size == 13 and "log2_hashmap_size" in changed  # from config.yml
    assert (
        config.pipeline.model.eval_num_rays_per_chunk == csd_edit_method.config.pipeline.model.eval_num_rays_per_chunk
    )
    assert config.pipeline.datamanager.data == run.config.pipeline.datamanager.data  # no --data: the source's


def test_cli_overrides_parsing():
    given = cli_overrides(["csd-edit", "--pipeline.model.num-levels=4", "--pipeline.prompt", "x", "nerfstudio-data"])
    assert given == {"pipeline.model.num_levels", "pipeline.prompt"}


def test_source_of_another_method_is_refused(source):
    import copy

    from csd_nerf.method_configs.csd_edit import csd_edit_method

    run = find_source(source / "nerfstudio_models", None, None)
    run.config = copy.deepcopy(run.config)
    run.config.method_name = "vanilla-nerf"
    run.config.pipeline.model = SimpleNamespace()
    with pytest.raises(SourceError, match="csd-edit edits nerfacto runs"):
        inherit_source_config(copy.deepcopy(csd_edit_method.config), run, argv=[])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_default_on_a_cpu_machine_names_the_cpu_flags(source):
    import copy

    from csd_nerf.method_configs.csd_edit import csd_edit_method
    from csd_nerf.nerf.trainer import resolve_source

    config = copy.deepcopy(csd_edit_method.config)
    config.load_dir = source / "nerfstudio_models"
    config.pipeline.prompt = "Make it snowy"
    with pytest.raises(SettingError, match="--machine.device-type cpu"):
        resolve_source(config)


def test_empty_prompt_is_a_clear_error(source):
    import copy

    from csd_nerf.method_configs.csd_edit import csd_edit_method
    from csd_nerf.nerf.trainer import resolve_source

    config = copy.deepcopy(csd_edit_method.config)
    config.load_dir = source / "nerfstudio_models"
    config.machine.device_type = "cpu"
    with pytest.raises(SettingError, match="--pipeline.prompt"):
        resolve_source(config)
    config.pipeline.model.prompt = "Make it snowy"  # where nerfstudio's --prompt alias puts it
    resolve_source(config)
    assert config.pipeline.prompt == "Make it snowy"


# --- viewer controls -------------------------------------------------------------------------------------------


def test_viewer_controls_apply_valid_values_and_ignore_bad_ones(pipeline, tiny_guidance):
    from csd_nerf.editor import CSDEditConfig, CSDEditor

    pipeline.editor = CSDEditor(tiny_guidance, CSDEditConfig(prompt="a"))
    try:
        pipeline.controls.prompt.value = "Make it snowy"
        pipeline.controls.guidance_scale.value = 10.0
        pipeline._apply_viewer_controls()
        assert pipeline.editor.config.prompt == "Make it snowy" and pipeline.editor.config.guidance_scale == 10.0
        pipeline.controls.prompt.value = "   "
        pipeline._apply_viewer_controls()
        assert pipeline.editor.config.prompt == "Make it snowy"
    finally:
        pipeline.editor = None


def test_model_construction_needs_no_lpips_download(pipeline):
    from csd_nerf.nerf.model import LazyLPIPS

    assert isinstance(pipeline.model.lpips, LazyLPIPS)
    assert not any(k.startswith("lpips.") for k in pipeline.model.state_dict())


# --- the demo ------------------------------------------------------------------------------------------------------


def _demo_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("csd_demo", Path(__file__).parent.parent / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_demo_with_too_few_views_to_hold_out_stops_before_writing(tmp_path, capsys):
    assert _demo_module().main(["--views", "8", "--output", str(tmp_path / "out")]) == 1
    assert "--views 8 is too few" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_demo_never_replaces_a_folder_it_did_not_make(tmp_path):
    demo = _demo_module()
    (tmp_path / "mine.txt").write_text("keep me")
    assert demo.main(["--output", str(tmp_path)]) == 1
    assert demo.main(["--output", str(tmp_path), "--overwrite"]) == 1
    assert (tmp_path / "mine.txt").read_text() == "keep me"
