"""The edit region of 3D scenes: its geometry against nerfstudio's crop box, what reaches the parameters inside and
outside it (nerfacto in both backpropagation modes, splats), its outline in previews and its viewer controls."""

from __future__ import annotations

import math

import pytest
import torch
from nerf_fixtures import build_pipeline, build_splat_pipeline, convergence_source_run, splat_source_run

from csd_nerf.errors import SettingError
from csd_nerf.nerf.region import Box, RegionConfig, ray_inside_fraction, rpy_matrix, weight_gradient

# --- geometry ----------------------------------------------------------------------------------------------------


def test_box_weights_match_nerfstudios_crop_box():
    """Inside means what ``OrientedBox.within`` (the viewer's crop box, ns-export's --obb-*) says, rotations too."""
    from nerfstudio.data.scene_box import OrientedBox

    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        center = tuple((torch.rand(3, generator=generator) - 0.5).tolist())
        rpy = tuple((torch.rand(3, generator=generator) * 2 * math.pi - math.pi).tolist())
        scale = tuple((torch.rand(3, generator=generator) + 0.2).tolist())
        points = torch.rand(4000, 3, generator=generator) * 3 - 1.5
        expected = OrientedBox.from_params(center, rpy, scale).within(points)
        box = RegionConfig(center=center, rotation=rpy, scale=scale).box()
        assert torch.equal(box.weights(points) > 0, expected)
        torch.testing.assert_close(box.rotation, OrientedBox.from_params(center, rpy, scale).R.float())


def test_the_margin_fades_linearly_outside_the_box():
    box = RegionConfig(center=(0.0, 0.0, 0.0), scale=(2.0, 2.0, 2.0), margin=0.5).box()
    points = torch.tensor([[0.5, 0, 0], [1.0, 0, 0], [1.25, 0, 0], [1.5, 0, 0], [3.0, 0, 0]])
    torch.testing.assert_close(box.weights(points), torch.tensor([1.0, 1.0, 0.5, 0.0, 0.0]))


def test_a_box_from_dataset_coordinates_goes_through_the_dataparser_transform():
    transform = torch.cat([rpy_matrix(0.0, 0.0, math.pi / 2), torch.tensor([[1.0], [2.0], [3.0]])], dim=1)
    region = RegionConfig.from_dataset_box((1.0, 0.0, 0.0), (0.5, 0.25, 1.0), transform, 0.5)
    assert region.center == pytest.approx((0.5, 1.5, 1.5), abs=1e-6)  # 0.5 * (Rz(90) (1, 0, 0) + (1, 2, 3))
    assert region.scale == pytest.approx((0.5, 0.25, 1.0)) and region.rotation == pytest.approx((0, 0, math.pi / 2))
    box = region.box()  # a dataset point inside the box lands inside the region
    world = 0.5 * (transform[:, :3] @ torch.tensor([1.4, 0.2, -0.9]) + transform[:, 3])
    assert box.weights(world[None]) == 1


def test_a_ray_counts_as_inside_by_its_rendered_weight():
    weights = torch.tensor([[[0.5], [0.5], [0.0]], [[0.0], [0.0], [0.0]]])
    inside = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(ray_inside_fraction(weights, inside), torch.tensor([[0.5], [0.0]]))


def test_weight_gradient_keeps_values_and_weights_the_gradient():
    x = torch.rand(2, 3, requires_grad=True)
    y = weight_gradient(x, torch.tensor([[0.0], [0.5]]))
    assert torch.equal(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([[0.0] * 3, [0.5] * 3]))


@pytest.mark.parametrize(
    "region, message",
    [
        (RegionConfig(center=(0, 0, 0)), "needs both"),
        (RegionConfig(center=(0, 0, 0), scale=(1, 0, 1)), "positive"),
        (RegionConfig(center=(0, 0, float("nan")), scale=(1, 1, 1)), "finite"),
        (RegionConfig(center=(0, 0, 0), scale=(1, 1, 1), margin=-1), ">= 0"),
    ],
)
def test_a_bad_region_is_one_line(region, message):
    with pytest.raises(SettingError, match=message) as error:
        region.validate()
    assert "\n" not in str(error.value)


# --- nerfacto ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(base):
    """nerfacto fitted well enough that its rendered weight sits on the objects (the shared 60-step source's does
    not yet: most of it is on the backdrop)."""
    return build_pipeline(convergence_source_run(base))


def _nerf_grads(pipeline, guidance, backprop: str, box: Box | None, upstream: torch.Tensor):
    from csd_nerf.nerf.deferred import ViewRenderer
    from csd_nerf.nerf.scene import NerfScene
    from csd_nerf.nerf.views import TrainViews

    model = pipeline.model
    model.train()
    model.zero_grad(set_to_none=True)
    views = TrainViews(pipeline.datamanager.train_dataset, 32, guidance.latent_factor)
    # No regularisers and no preservation: what reaches the field is the edit's gradient alone.
    renderer = ViewRenderer(model, views.cameras, chunk=300, regulariser_weight=0.0)
    scene = NerfScene(renderer, views, guidance, backprop=backprop, seed=3)
    scene.set_region(box, 0.0)
    latents = scene.latents([0, 5])
    scene.backward(latents, upstream)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, renderer


def _central_box(pipeline, half: float) -> Box:
    """A box of half-size ``half`` (dataset units) around the synthetic scene's centre (where its cameras look)."""
    from csd_nerf.testing.synthetic import CENTRE

    outputs = pipeline.datamanager.train_dataparser_outputs
    region = RegionConfig.from_dataset_box(
        tuple(CENTRE.tolist()), (half, half, half), outputs.dataparser_transform, float(outputs.dataparser_scale)
    )
    return region.box()


@pytest.mark.parametrize("backprop", ["direct", "deferred"])
def test_nerfacto_gets_no_edit_gradient_from_a_region_nothing_renders_in(pipeline, tiny_guidance, backprop):
    upstream = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    far = RegionConfig(center=(100.0, 100.0, 100.0), scale=(1.0, 1.0, 1.0)).box()
    grads, _ = _nerf_grads(pipeline, tiny_guidance, backprop, far, upstream)
    assert grads and all(float(g.abs().max()) == 0.0 for g in grads.values())
    whole, _ = _nerf_grads(pipeline, tiny_guidance, backprop, None, upstream)
    assert any(float(g.abs().max()) > 0 for g in whole.values())


def test_nerfacto_region_gradients_agree_between_direct_and_deferred(pipeline, tiny_guidance):
    """The pixel gradient is weighted by each ray's rendered share inside the region in both modes alike."""
    upstream = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    box = _central_box(pipeline, 0.4)
    direct, renderer = _nerf_grads(pipeline, tiny_guidance, "direct", box, upstream)
    inside = renderer.render([0, 5], 3)[2]
    assert 0.01 < float(inside.mean()) < 0.5  # the box covers part of the views (observed 0.040)
    deferred, _ = _nerf_grads(pipeline, tiny_guidance, "deferred", box, upstream)
    whole, _ = _nerf_grads(pipeline, tiny_guidance, "direct", None, upstream)
    assert set(direct) == set(deferred)
    for name in direct:
        torch.testing.assert_close(deferred[name], direct[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(not torch.allclose(direct[n], whole[n]) for n in direct)  # the region changed what reached them


def test_the_outside_is_pulled_toward_the_source(pipeline, tiny_guidance):
    """nerfacto cannot freeze the outside: the preservation term's gradient is there, and only for the outside."""
    from csd_nerf.nerf.deferred import ViewRenderer
    from csd_nerf.nerf.scene import NerfScene
    from csd_nerf.nerf.views import TrainViews

    views = TrainViews(pipeline.datamanager.train_dataset, 32, tiny_guidance.latent_factor)
    scene = NerfScene(ViewRenderer(pipeline.model, views.cameras, regulariser_weight=0.0), views, tiny_guidance)
    box = _central_box(pipeline, 0.4)
    scene.set_region(box, 1.0)
    renders = views.source_images([0]) + 0.1
    inside = torch.zeros(1, 1, 32, 32)
    inside[..., :16, :] = 1.0
    loss = scene.preservation(renders.requires_grad_(True), [0], 1 - inside)
    (grad,) = torch.autograd.grad(loss, renders)
    assert float(grad[..., :16, :].abs().max()) == 0.0 and float(grad[..., 16:, :].min()) > 0
    torch.testing.assert_close(loss, torch.tensor(0.01 * 3 * 16 * 32))  # summed over the outside's pixels


# --- splats ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def splat_pipeline(base):
    return build_splat_pipeline(splat_source_run(base))


def test_only_the_gaussians_inside_the_region_receive_the_edit(splat_pipeline, tiny_guidance):
    from csd_nerf.nerf.splat_scene import SplatScene
    from csd_nerf.nerf.views import TrainViews

    model = splat_pipeline.model
    model.train()
    model.zero_grad(set_to_none=True)
    views = TrainViews(splat_pipeline.datamanager.train_dataset, 32, tiny_guidance.latent_factor)
    scene = SplatScene(model, views, tiny_guidance)
    box = _central_box(splat_pipeline, 0.4)
    scene.set_region(box, 1.0)
    latents = scene.latents([0, 5])
    losses = scene.backward(latents, torch.randn(latents.shape, generator=torch.Generator().manual_seed(2)))
    assert losses["preservation_loss"] > 0  # the pull of the pixels the region does not render
    inside = box.weights(model.means.detach()) > 0
    assert 10 < int(inside.sum()) < len(inside) // 2  # observed 138 of 4488
    for name, param in model.gauss_params.items():
        assert float(param.grad[~inside].abs().max()) == 0.0, name
    assert float(model.means.grad[inside].abs().max()) > 0
    model.zero_grad(set_to_none=True)
    scene.set_region(None)


def test_a_splat_region_renders_the_share_of_each_pixel_its_gaussians_make(splat_pipeline, tiny_guidance):
    """The share rendered with every weight 1 is the render's alpha; the box's share lies between 0 and it, and
    an edit's pixel gradient is scaled by it (a Gaussian inside the box spreads over pixels outside it)."""
    from csd_nerf.nerf.splat_scene import SplatScene
    from csd_nerf.nerf.views import TrainViews

    model = splat_pipeline.model
    model.eval()
    views = TrainViews(splat_pipeline.datamanager.train_dataset, 32, tiny_guidance.latent_factor)
    scene = SplatScene(model, views, tiny_guidance)
    cameras = [scene._camera(i) for i in (0, 5)]
    count = model.means.shape[0]
    with torch.no_grad():
        _, alpha, _ = model._rasterize(cameras, torch.ones(count, 1), None)
    everything = model.render_share(cameras, torch.ones(count))
    torch.testing.assert_close(everything, alpha.permute(0, 3, 1, 2))
    box = _central_box(splat_pipeline, 0.4)
    share = model.render_share(cameras, box.weights(model.means.detach()))
    assert bool((share <= everything + 1e-6).all()) and float(share.min()) >= 0
    assert 0.01 < float(share.mean()) < 0.5  # the box covers part of the views

    scene.set_region(box, 0.0)
    latents = scene.latents([0, 5])
    renders = scene._step[1]
    renders.retain_grad()
    scene.backward(latents, torch.ones_like(latents))
    plain = renders.detach().requires_grad_(True)
    tiny_guidance.encode_images(plain).sum().backward()
    torch.testing.assert_close(renders.grad, plain.grad * share)
    model.zero_grad(set_to_none=True)
    scene.set_region(None)


# --- previews and the viewer -------------------------------------------------------------------------------------


def test_the_preview_draws_the_regions_outline_where_the_camera_sees_it(pipeline):
    from csd_nerf.nerf.preview import OUTLINE, preview_strip, project_points
    from csd_nerf.nerf.views import TrainViews

    views = TrainViews(pipeline.datamanager.train_dataset, 32, 8)
    camera = views.camera(0)
    box = _central_box(pipeline, 0.4)
    corners = project_points(box.corners(), camera.camera_to_worlds[0], camera.get_intrinsics_matrices()[0])
    assert bool((corners[:, 2] > 0).all())  # the scene's centre is in front of every training camera
    assert bool(((corners[:, :2] > 0) & (corners[:, :2] < 32)).all())  # and inside its picture
    segments = [(tuple(corners[a, :2].tolist()), tuple(corners[b, :2].tolist())) for a, b in Box.EDGES]
    image = views.source_images([0])[0]
    strip = preview_strip(image, image, image, outline=segments)
    orange = (strip - torch.tensor(OUTLINE)).abs().amax(-1) < 0.02
    plain = (preview_strip(image, image, image) - torch.tensor(OUTLINE)).abs().amax(-1) < 0.02
    assert int(orange.sum()) > int(plain.sum()) + 100


def test_viewer_region_controls_apply_at_the_next_step_and_reach_config_yml(pipeline, tiny_guidance):
    """Changing the region in the viewer's controls sets the scene's region and rewrites the run's config."""
    from csd_nerf.editor import CSDEditConfig, CSDEditor
    from csd_nerf.nerf.deferred import ViewRenderer
    from csd_nerf.nerf.scene import NerfScene
    from csd_nerf.nerf.views import TrainViews

    views = TrainViews(pipeline.datamanager.train_dataset, 16, tiny_guidance.latent_factor)
    pipeline.editor = CSDEditor(tiny_guidance, CSDEditConfig(prompt="a"))
    pipeline.scene = NerfScene(ViewRenderer(pipeline.model, views.cameras), views, tiny_guidance)
    saved = []
    pipeline.on_settings_changed = lambda: saved.append(pipeline.config.region)
    controls = pipeline.controls.region
    try:
        pipeline._apply_viewer_controls()
        assert saved == [] and pipeline.scene.region is None
        controls.center.value, controls.scale.value = (0.1, 0.2, 0.3), (0.5, 0.5, 0.5)
        controls.enabled.value = True
        pipeline._apply_viewer_controls()
        assert pipeline.config.region.center == (0.1, 0.2, 0.3) and pipeline.config.region.scale == (0.5, 0.5, 0.5)
        assert pipeline.scene.region is not None and len(saved) == 1
        controls.scale.value = (0.5, -1.0, 0.5)  # refused, once, the region stays
        pipeline._apply_viewer_controls()
        assert pipeline.config.region.scale == (0.5, 0.5, 0.5) and len(saved) == 1
        controls.enabled.value = False
        pipeline._apply_viewer_controls()
        assert pipeline.scene.region is None and not pipeline.config.region.enabled and len(saved) == 2
    finally:
        pipeline.editor = pipeline.scene = pipeline.on_settings_changed = None
        pipeline.config.region = RegionConfig()
        controls.enabled.value = False
