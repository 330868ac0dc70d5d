"""The panorama scene: window grid, count-map averaging, VAE tiling, and SVGD agreement of overlapping windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csd_nerf.editor import CSDEditConfig, CSDEditor
from csd_nerf.media.encoding import decode, encode_sources, use_tiling
from csd_nerf.media.jobs import PanoramaJob, panorama_working_size
from csd_nerf.media.panorama import PanoramaScene, count_map, window_grid, window_offsets

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _canvas(height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.randn(1, 4, height, width, generator=torch.Generator().manual_seed(seed))
    return z, z / 0.18215


def test_offsets_step_by_stride_and_end_flush_with_the_edge():
    assert window_offsets(64, 64, 16) == [0]
    assert window_offsets(240, 64, 16) == list(range(0, 177, 16))  # 1920 px: the reference's 12 windows
    assert window_offsets(250, 64, 16) == [*range(0, 177, 16), 186]  # stride does not divide: flush last window
    with pytest.raises(ValueError, match="smaller than one window"):
        window_offsets(63, 64, 16)


@pytest.mark.parametrize(("height", "width", "window", "stride"), [(9, 19, 8, 4), (12, 31, 8, 3), (8, 8, 8, 2)])
def test_every_latent_pixel_is_covered_by_some_window(height, width, window, stride):
    windows = window_grid(height, width, window, stride)
    assert count_map(windows, height, width, window).min() >= 1


def test_backward_averages_overlaps_and_leaves_uncovered_pixels_at_zero():
    scene = PanoramaScene(*_canvas(8, 24), window=8, stride=4)  # windows at left 0, 4, ..., 16
    ids = [0, 1, 3]  # lefts 0, 4, 12: columns 0-3 once, 4-7 twice, 8-11 once, 12-19 once, 20-23 uncovered
    values = torch.tensor([1.0, 3.0, 5.0])
    scene.latents(ids).backward(gradient=values.view(3, 1, 1, 1).expand(3, 4, 8, 8))

    grad = scene.canvas.grad[0, 0, 0]  # one row: every row and channel is the same here
    expected = torch.tensor([1.0] * 4 + [2.0] * 4 + [3.0] * 4 + [5.0] * 8 + [0.0] * 4)
    assert torch.equal(grad, expected)
    assert torch.equal(scene.canvas.grad, expected.expand_as(scene.canvas.grad))


def test_backward_matches_a_brute_force_scatter_average():
    scene = PanoramaScene(*_canvas(12, 31), window=8, stride=3)
    ids = [0, 2, 5, 7, 11]
    g = torch.randn(len(ids), 4, 8, 8, generator=torch.Generator().manual_seed(1))
    scene.latents(ids).backward(gradient=g)

    total, count = torch.zeros(1, 4, 12, 31), torch.zeros(12, 31)
    for k, i in enumerate(ids):
        top, left = scene.windows[i]
        total[0, :, top : top + 8, left : left + 8] += g[k]
        count[top : top + 8, left : left + 8] += 1
    expected = torch.where(count > 0, total / count.clamp(min=1), torch.zeros(()))
    assert torch.allclose(scene.canvas.grad, expected, atol=1e-6)
    assert not scene.canvas.grad[..., count == 0].any()


def test_windows_are_views_of_one_canvas_and_of_the_cached_source():
    z, c = _canvas(9, 19)
    scene = PanoramaScene(z, c, window=8, stride=4)
    ids = [1, 5]
    source, conditioning = scene.sources(ids)
    top, left = scene.windows[5]
    assert torch.equal(source[1], z[0, :, top : top + 8, left : left + 8])
    assert torch.equal(conditioning[1], c[0, :, top : top + 8, left : left + 8])
    with torch.no_grad():
        scene.canvas.add_(1.0)
    assert torch.equal(scene.latents(ids)[1], z[0, :, top : top + 8, left : left + 8] + 1.0)


def test_a_canvas_smaller_than_one_window_is_refused():
    with pytest.raises(ValueError, match="smaller than one window"):
        PanoramaScene(*_canvas(7, 40), window=8, stride=4)


@pytest.mark.parametrize(
    "size, window_px, expected",
    [
        ((150, 70), 64, (152, 72)),  # large enough: its own size, snapped to multiples of 8
        ((1112, 400), 512, (1424, 512)),  # short side below one window: enlarged with the aspect kept
        ((400, 1112), 512, (512, 1424)),
        ((100, 100), 512, (512, 512)),
        ((2048, 512), 512, (2048, 512)),
    ],
)
def test_working_size_is_snapped_and_holds_one_window(size, window_px, expected):
    assert panorama_working_size(*size, window_px, 8) == expected


def test_a_panorama_smaller_than_one_window_is_edited_at_one_window_and_written_back(tiny_guidance):
    job = PanoramaJob(np.full((20, 45, 3), 90, np.uint8), window=8, stride=4)  # tiny VAE: factor 8, window 64 px
    scene = job.build_scene(tiny_guidance)
    assert job.working.shape == (64, 144, 3) and (scene.height, scene.width) == (8, 18)
    assert job.render(tiny_guidance, scene).shape == (20, 45, 3)
    assert job.info(scene)["working_size"] == [144, 64] and job.size == (45, 20)


def test_vae_tiling_keeps_the_latent_geometry_at_tiny_size(tiny_guidance):
    image = torch.rand(1, 3, 136, 200, generator=torch.Generator().manual_seed(0))  # tiles of 64 px: 3 x 4
    latents, conditioning = encode_sources(tiny_guidance, image, tiling="on")
    assert latents.shape == conditioning.shape == (1, 4, 17, 25)
    assert torch.isfinite(latents).all()
    decoded = decode(tiny_guidance, latents, tiling="on")
    assert decoded.shape == (1, 3, 136, 200)
    assert not tiny_guidance.vae.use_tiling  # the shared VAE is left as it was


def test_vae_tiling_keeps_the_latent_geometry_at_real_size():
    from diffusers import AutoencoderKL

    from csd_nerf.guidance import GuidanceConfig, IP2PGuidance
    from csd_nerf.guidance.presets import build_components

    parts = build_components("tiny")
    # SD's VAE geometry (512 px tiles, 8x down) with few channels: the tiling arithmetic of a real model, cheaply.
    parts.vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        norm_num_groups=8,
        sample_size=512,
        scaling_factor=0.18215,
    )
    guidance = IP2PGuidance(GuidanceConfig(model="random:tiny"), parts)
    assert guidance.vae.tile_latent_min_size == 64
    image = torch.rand(1, 3, 520, 776, generator=torch.Generator().manual_seed(0))
    latents, _ = encode_sources(guidance, image, tiling="on")
    assert latents.shape == (1, 4, 65, 97)
    assert decode(guidance, latents, tiling="on").shape == (1, 3, 520, 776)


def test_auto_tiling_starts_above_two_megapixels():
    assert not use_tiling("auto", 656, 1920) and not use_tiling("auto", 1080, 1920)
    assert use_tiling("auto", 1024, 4096)
    assert use_tiling("on", 64, 64) and not use_tiling("off", 4096, 4096)


class _RecordingPanorama(PanoramaScene):
    """Keeps each window's own gradient (before the count-map average) for inspection."""

    def latents(self, ids):
        windows = super().latents(ids)
        windows.register_hook(lambda grad: setattr(self, "window_grads", grad.clone()))
        return windows


def _overlap_agreement(scene: _RecordingPanorama, ids: list[int]) -> float:
    """Mean cosine similarity of overlapping windows' gradients on the canvas pixels they share."""
    grads, window = scene.window_grads, scene.window
    cosines = []
    for a in range(len(ids)):
        for b in range(a + 1, len(ids)):
            (ta, la), (tb, lb) = scene.windows[ids[a]], scene.windows[ids[b]]
            top, bottom = max(ta, tb), min(ta, tb) + window
            left, right = max(la, lb), min(la, lb) + window
            if bottom <= top or right <= left:
                continue
            ga = grads[a][:, top - ta : bottom - ta, left - la : right - la].flatten()
            gb = grads[b][:, top - tb : bottom - tb, left - lb : right - lb].flatten()
            cosines.append(torch.nn.functional.cosine_similarity(ga, gb, dim=0).item())
    return float(np.mean(cosines))


def test_svgd_makes_overlapping_windows_agree_more_than_independent_windows(tiny_guidance):
    image = torch.rand(1, 3, 64, 256, generator=torch.Generator().manual_seed(1))
    latents, conditioning = encode_sources(tiny_guidance, image, tiling="off")
    ids = [3, 4, 5, 6]  # neighbours on a stride of 2 with a window of 8: heavy overlaps
    agreement = {}
    for coupling in (True, False):
        per_seed = []
        for seed in range(3):  # same seeds for both: same timesteps and noise, only the coupling differs
            scene = _RecordingPanorama(latents, conditioning, window=8, stride=2)
            editor = CSDEditor(tiny_guidance, CSDEditConfig(prompt="paint it", coupling=coupling, seed=seed))
            editor.step(scene, ids)
            per_seed.append(_overlap_agreement(scene, ids))
        agreement[coupling] = per_seed
    assert all(c > i for c, i in zip(agreement[True], agreement[False], strict=True)), agreement
