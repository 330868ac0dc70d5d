"""Iterative dataset update (``--pipeline.mode idu``): what an update writes and where, the scene's own loss in
between, the run folder's edited images, stock ns-render on the result, and a known-answer convergence."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from nerf_fixtures import (
    CPU,
    IDU_EDIT_STEPS,
    IDU_EVERY,
    IDU_VIEWS,
    QUIET,
    _once,
    build_pipeline,
    build_splat_pipeline,
    convergence_source_run,
    file_digests,
    idu_edited_run,
    run_tool,
    splat_source_run,
    synthetic_scene,
    video_frames,
)
from PIL import Image

from csd_nerf.errors import SettingError
from csd_nerf.nerf.editing import EditSettings, validate_mode
from csd_nerf.testing.convergence import ConvergenceConfig, run_known_answer_edit
from csd_nerf.testing.synthetic import SyntheticSceneConfig, make_synthetic_scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- settings ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, flag",
    [
        ({"idu_views": 0}, "--pipeline.idu-views 0"),
        ({"idu_every": 0}, "--pipeline.idu-every 0"),
        ({"idu_steps": -2}, "--pipeline.idu-steps -2"),
        ({"idu_lr": 0.0}, "--pipeline.idu-lr 0.0"),
        ({"idu_lr": float("nan")}, "--pipeline.idu-lr nan"),
        ({"mode": "iterative"}, "--pipeline.mode 'iterative'"),
        ({"mode": "idu", "preservation_weight": 0.5}, "--pipeline.preservation-weight"),
    ],
)
def test_bad_idu_settings_are_one_line_errors(change, flag):
    with pytest.raises(SettingError) as error:
        validate_mode(EditSettings(prompt="x", **change))
    message = str(error.value)
    assert message.startswith(flag) and "\n" not in message


def test_a_region_is_refused_in_idu_mode():
    from csd_nerf.nerf.region import RegionConfig

    settings = EditSettings(prompt="x", mode="idu", region=RegionConfig(center=(0, 0, 0), scale=(1, 1, 1)))
    with pytest.raises(SettingError, match="--pipeline.region works with --pipeline.mode distill only"):
        validate_mode(settings)
    validate_mode(EditSettings(prompt="x"))  # the defaults are valid
    validate_mode(EditSettings(prompt="x", mode="idu"))


def test_ns_train_refuses_bad_idu_settings_before_writing_anything(base, source, tmp_path):
    args = ["ns-train", "csd-edit", "--load-dir", str(source / "nerfstudio_models"), "--output-dir", str(tmp_path)]
    args += ["--pipeline.prompt", "x", "--pipeline.mode", "idu", "--pipeline.idu-views", "0"] + CPU + QUIET
    proc = run_tool(args, base, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("csd-edit: error:")]
    assert errors == ["csd-edit: error: --pipeline.idu-views 0: use a whole number of at least 1"], proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


# --- one update, in process ----------------------------------------------------------------------------------------


def _pipeline(representation: str, base: Path, **options):
    options = {"prompt": "Turn the ball blue", "mode": "idu", "render_resolution": 16, **options}
    if representation == "nerfacto":
        from nerf_fixtures import source_run

        return build_pipeline(source_run(base), **options)
    return build_splat_pipeline(splat_source_run(base), **options)


def _cache(pipeline) -> list[torch.Tensor]:
    images = pipeline.updater.images
    return [images._tensor(i).detach().clone() for i in range(len(images))]


@pytest.mark.parametrize("representation", ["nerfacto", "splat"])
def test_an_update_replaces_exactly_the_chosen_training_images(representation, base, tiny_guidance):
    """Only the drawn views' cached training images change, at their own size and dtype; the files on disk, the
    views' source images and the prior's conditioning stay the originals."""
    pipeline = _pipeline(representation, base, idu_views=3, idu_steps=2)
    pipeline.setup_editing(None, guidance=tiny_guidance)
    scene = pipeline.scene
    all_ids = list(range(scene.num_views))
    disk = file_digests(synthetic_scene(base))
    sources_before = scene.views.source_images(all_ids).clone()
    cache_before = _cache(pipeline)

    record = pipeline.updater.update(0)

    assert len(record.ids) == 3 and len(set(record.ids)) == 3
    cache_after = _cache(pipeline)
    changed = [i for i in all_ids if not torch.equal(cache_after[i], cache_before[i])]
    assert sorted(changed) == sorted(record.ids)
    for i in record.ids:
        assert cache_after[i].shape == cache_before[i].shape == (32, 32, 3)  # the training size, not the 16 px render
        assert cache_after[i].dtype == cache_before[i].dtype  # uint8 for splats, float32 for nerfacto
    assert file_digests(synthetic_scene(base)) == disk
    scene.views._images.clear()  # read the source images again from the dataset
    assert torch.equal(scene.views.source_images(all_ids), sources_before)
    latents, conditioning = scene.sources(record.ids)
    fresh, fresh_conditioning = tiny_guidance.encode_source(sources_before[record.ids])
    torch.testing.assert_close(conditioning, fresh_conditioning)
    torch.testing.assert_close(latents, fresh)

    second = pipeline.updater.update(1)  # without replacement over an epoch
    assert not set(second.ids) & set(record.ids)


@pytest.mark.parametrize("representation", ["nerfacto", "splat"])
def test_between_updates_the_scene_fits_its_training_images(representation, base, tiny_guidance):
    """After an update the scene trains on its own loss (nerfacto's ray RGB loss and regularisers, splatfacto's
    image loss): its parameters move, and its renders of the edited views approach the edited images."""
    pipeline = _pipeline(representation, base, idu_views=4, idu_steps=2, idu_every=1000)
    pipeline.setup_editing(None, guidance=tiny_guidance)
    model, updater = pipeline.model, pipeline.updater
    if representation == "nerfacto":
        pipeline.datamanager.train_pixel_sampler.num_rays_per_batch = 1024
    updater.update(0)
    ids = updater.last_ids

    def error() -> float:
        renders = pipeline.render_training_views(ids).cpu()
        edited = torch.stack([updater.images.get(i) for i in ids])
        edited = torch.nn.functional.interpolate(edited, renders.shape[-2:], mode="bilinear", antialias=True)
        return float((renders - edited).square().mean())

    lr = 1e-2 if representation == "nerfacto" else 5e-3
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    parameters = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    before = error()
    losses = {}
    for step in range(1, 41):
        optimizer.zero_grad(set_to_none=True)
        if representation == "splat":
            model.step_cb(SimpleNamespace(optimizers={}), step)  # the trainer's callback before each step
        losses, metrics = pipeline.edit_step(step)
        optimizer.step()
    after = error()
    print(representation, before, after, losses)
    expected = {"rgb_loss", "interlevel_loss", "distortion_loss"} if representation == "nerfacto" else {"main_loss"}
    assert expected <= set(losses)
    assert metrics["idu_updates"] == 1.0 and metrics["idu_edited_views"] == 4.0  # no update after step 0
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, parameters[n])]
    assert moved
    # Observed (2-core CPU, 40 steps): nerfacto 0.0519 -> 0.0180 (-65 %), splats 0.0645 -> 0.0450 (-30 %); the
    # bound asks for a 20 % drop (margins: 0.023 and 0.0066 in mean squared error).
    assert after <= 0.8 * before, (before, after)


def test_viewer_settings_reach_the_next_update_and_a_region_is_refused(base, tiny_guidance, capsys):
    """The viewer's instruction and scales apply at the next update (the same editor); a region drawn in the viewer
    is refused with a note in idu mode (regions are distill's)."""
    pipeline = _pipeline("nerfacto", base, idu_views=2, idu_steps=1, idu_every=1000)
    pipeline.setup_editing(None, guidance=tiny_guidance)
    pipeline.datamanager.train_pixel_sampler.num_rays_per_batch = 256
    controls = pipeline.controls
    controls.prompt.value = "Make it snowy"
    controls.image_guidance_scale.value = 2.5
    controls.region.enabled.value = True
    pipeline.edit_step(0)
    assert pipeline.updater.editor is pipeline.editor
    assert pipeline.editor.config.prompt == "Make it snowy" and pipeline.editor.config.image_guidance_scale == 2.5
    assert pipeline.editor.config.num_particles == pipeline.config.num_particles  # restored after the update
    assert pipeline.config.prompt == "Make it snowy" and not pipeline.config.region.enabled
    assert "an edit region works with --pipeline.mode distill only" in " ".join(capsys.readouterr().out.split())


def test_ctrl_c_in_idu_mode_keeps_the_edited_images_with_the_checkpoint(base, tiny_guidance, tmp_path):
    """Interrupted after two steps (one update), the run saves its checkpoint and its edited images, exit 130."""
    import copy

    from nerf_fixtures import source_run

    from csd_nerf.method_configs.csd_edit import csd_edit_method

    config = copy.deepcopy(csd_edit_method.config)
    config.load_dir = source_run(base) / "nerfstudio_models"
    config.output_dir, config.vis = tmp_path, "tensorboard"
    config.machine.device_type, config.pipeline.model.implementation = "cpu", "torch"
    config.logging.local_writer.enable = False
    p = config.pipeline
    p.prompt, p.mode, p.idu_views, p.idu_steps, p.render_resolution = "x", "idu", 2, 1, 16
    p.preview_every, p.datamanager.train_num_rays_per_batch = 0, 256
    config.set_timestamp()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup(guidance=tiny_guidance)
    edit_step = trainer.pipeline.edit_step

    def interrupted(step: int):
        if step == 2:
            raise KeyboardInterrupt
        return edit_step(step)

    trainer.pipeline.edit_step = interrupted
    with pytest.raises(SystemExit) as stop:
        trainer.train()
    assert stop.value.code == 130
    run = trainer.base_dir
    assert [c.name for c in (run / "nerfstudio_models").glob("*.ckpt")] == ["step-000000001.ckpt"]
    index = json.loads((run / "edited_images" / "index.json").read_text())["images"]
    assert len(index) == 2 and all((run / "edited_images" / e["file"]).is_file() for e in index)


def test_distill_mode_never_trains_on_its_images(base):
    from nerf_fixtures import source_run

    pipeline = build_pipeline(source_run(base), prompt="x")
    with pytest.raises(RuntimeError, match="not get_train_loss_dict"):
        pipeline.get_train_loss_dict(0)


# --- ns-train end to end, stock ns-render, continuing ---------------------------------------------------------------


@pytest.fixture(scope="module")
def idu_run(base) -> Path:
    return idu_edited_run(base)


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"))


def test_ns_train_csd_edit_idu_end_to_end(base, idu_run):
    """Two updates of 3 views: every checkpoint has the edited training images beside it, at the images' size;
    the data folder is untouched."""
    checkpoints = sorted(p.name for p in (idu_run / "nerfstudio_models").glob("step-*.ckpt"))
    assert checkpoints == ["step-000000003.ckpt", f"step-{IDU_EDIT_STEPS - 1:09d}.ckpt"]
    index = json.loads((idu_run / "edited_images" / "index.json").read_text())["images"]
    assert len(index) == 2 * IDU_VIEWS  # drawn without replacement: 6 distinct views
    assert sorted(entry["edited_at_step"] for entry in index) == [0] * IDU_VIEWS + [IDU_EVERY] * IDU_VIEWS
    scene = synthetic_scene(base)
    for entry in index:
        edited = _png(idu_run / "edited_images" / entry["file"])
        original = _png(scene / "images" / entry["image"])
        assert edited.shape == original.shape == (32, 32, 3)
        assert np.abs(edited.astype(int) - original.astype(int)).mean() > 1  # the tiny prior changed it
    digests = json.loads((idu_run.parents[3] / "scene_digests.json").read_text())
    assert file_digests(scene) == digests  # the source images on disk are never written
    assert sorted(p.name for p in (idu_run / "previews").glob("*.png")) == ["step-000000.png", "step-000004.png"]
    log = (idu_run.parents[3] / "stdout.txt").read_text()
    assert "iterative dataset update: every 4 steps, 3 of 22 training views" in log
    config = (idu_run / "config.yml").read_text()
    assert "mode: idu" in config and "idu_views: 3" in config


def test_stock_ns_render_on_an_idu_run(base, idu_run, tmp_path):
    video = tmp_path / "idu.mp4"
    command = ["ns-render", "interpolate", "--load-config", str(idu_run / "config.yml"), "--output-path", str(video)]
    proc = run_tool(command + ["--interpolation-steps", "2", "--frame-rate", "4"], base, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    frames = video_frames(video)
    assert len(frames) >= 2 and frames.shape[1:] == (32, 32, 3) and frames.std() > 1
    assert "InstructPix2Pix" not in proc.stdout + proc.stderr


def test_an_idu_edit_of_an_idu_run_continues_from_its_edited_images(base, idu_run, tmp_path):
    """Editing an idu run again (its checkpoint as the source) takes its edited training images as the current
    ones: they are written, unchanged, into the new run's folder with its own step-0 update."""
    args = ["ns-train", "csd-edit", "--load-dir", str(idu_run / "nerfstudio_models"), "--output-dir", str(tmp_path)]
    args += ["--max-num-iterations", "1", "--pipeline.prompt", "x", "--pipeline.ip2p-model", "tiny"]
    args += ["--pipeline.mode", "idu", "--pipeline.idu-views", "2", "--pipeline.idu-steps", "1"]
    args += ["--pipeline.render-resolution", "16", "--pipeline.datamanager.train-num-rays-per-batch", "128"]
    args += ["--pipeline.preview-every", "0"] + CPU + QUIET
    proc = run_tool(args, base, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"continuing an idu edit: {2 * IDU_VIEWS} edited training images taken from" in " ".join(proc.stdout.split())
    run = next(tmp_path.glob("*/csd-edit/*/config.yml")).parent
    first = {e["image"]: e for e in json.loads((idu_run / "edited_images" / "index.json").read_text())["images"]}
    second = {e["image"]: e for e in json.loads((run / "edited_images" / "index.json").read_text())["images"]}
    assert set(first) <= set(second) and 2 * IDU_VIEWS <= len(second) <= 2 * IDU_VIEWS + 2
    kept = [name for name in first if second[name]["edited_at_step"] == -1]
    assert len(kept) >= 2 * IDU_VIEWS - 2  # at most the 2 views of the new step-0 update were edited again
    for name in kept:
        assert np.array_equal(_png(run / "edited_images" / name), _png(idu_run / "edited_images" / name))


# --- known-answer convergence in idu mode ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target(base) -> Path:
    config = SyntheticSceneConfig(num_views=24, width=32, height=32, layout="edited")
    return _once(base / "target", lambda folder: make_synthetic_scene(folder, config))


IDU_KNOWN_ANSWER = {"mode": "idu", "idu_every": 20, "idu_views": 6, "idu_steps": 20}
"""60 steps: updates at steps 0, 20 and 40, 6 of the 18 training views each (every view once)."""


def _idu_edit(base: Path, work: Path, target: Path, **options) -> dict:
    config = ConvergenceConfig(
        source_data=synthetic_scene(base),
        target_data=target,
        work_dir=work,
        steps=60,
        render_resolution=32,
        source_run=convergence_source_run(base),
        **IDU_KNOWN_ANSWER,
        **options,
    )
    report = run_known_answer_edit(config, log=lambda message: None)
    print({k: v for k, v in report.items() if k != "settings"})
    return report


def test_idu_known_answer_edit_converges_toward_the_target(base, target, tmp_path):
    """Observed (2-core CPU; the 500-step nerfacto source of tests/test_convergence.py; 60 steps, updates of 6
    views at steps 0, 20, 40; 0.19 s/step): held-out PSNR to the target 13.40 -> 16.36 dB (+2.96) where the same
    run toward the source gets +0.16 (the next test); training views +5.16 dB. The distill edit of
    tests/test_convergence.py gets +2.97 dB held out in the same 60 steps at 0.45 s/step."""
    report = _idu_edit(base, tmp_path, target)
    assert report["mode"] == "idu" and report["idu"]["updates"] == 3 and report["idu"]["views_edited"] == 18
    assert report["psnr_gain"] >= 1.5, report  # observed 2.96: margin 1.46 dB
    assert report["psnr_train_views_after"] >= report["psnr_train_views_before"] + 2.5, report  # observed 5.16
    assert report["psnr_to_source_after"] < report["psnr_to_source_before"], report  # it left the source (-2.95)


def test_idu_known_answer_edit_toward_the_source_does_no_harm(base, tmp_path):
    """Observed: +0.16 dB held out (bound: at most 0.5 dB lost; margin 0.66 dB)."""
    report = _idu_edit(base, tmp_path, synthetic_scene(base))
    assert report["psnr_after"] >= report["psnr_before"] - 0.5, report


def test_the_bench_reports_both_modes_side_by_side():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_convergence.py"
    spec = importlib.util.spec_from_file_location("bench_convergence", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.build_parser().parse_args(["--mode", "distill", "idu", "--idu-every", "20", "--eval-every", "5"])
    assert args.mode == ["distill", "idu"] and args.idu_every == 20 and args.eval_every == 5
    report = {"psnr_before": 14.0, "psnr_after": 18.0, "psnr_gain": 4.0, "seconds_per_step": 0.5, "seconds": 10.0}
    table = bench.side_by_side(
        {"distill": {**report, "first_step_gain_3db": 40, "first_seconds_gain_3db": 20.0}, "idu": report}
    )
    assert "| distill | 14.0 -> 18.0 | +4.00 | 0.5 | 10.0 | 40, 20.0 |" in table
    assert "| idu | 14.0 -> 18.0 | +4.00 | 0.5 | 10.0 | not reached |" in table
