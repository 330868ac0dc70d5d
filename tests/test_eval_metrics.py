"""The evaluation metrics against values worked out by hand on fixed embeddings and images."""

from __future__ import annotations

import math

import pytest
import torch

from csd_nerf.eval import metrics as M


def _plane(angle_deg: float, dim: int = 6, scale: float = 1.0) -> torch.Tensor:
    """``scale * (cos a e0 + sin a e1)`` in ``dim`` dimensions."""
    a = math.radians(angle_deg)
    v = torch.zeros(dim, dtype=torch.float64)
    v[0], v[1] = math.cos(a), math.sin(a)
    return scale * v


def test_directional_similarity_of_rotations_is_half_angle_cosine():
    # Source image and caption at e0; the edit rotates the image by theta and the caption by alpha in one plane.
    # A chord of the unit circle from angle 0 to angle x points along 90 deg + x/2, so the cosine is cos((theta - alpha)/2).
    theta, alpha = 60.0, 20.0
    src = torch.stack([_plane(0.0), _plane(0.0)])
    edit = torch.stack(
        [_plane(theta), _plane(theta, scale=7.0)]
    )  # CLIP scale must not matter: embeddings are normalised
    got = M.clip_directional_similarity(src, edit, _plane(0.0, scale=3.0), _plane(alpha))
    expected = math.cos(math.radians((theta - alpha) / 2))
    assert got.shape == (2,)
    assert torch.allclose(got, torch.full((2,), expected, dtype=torch.float64), atol=1e-12)


def test_directional_similarity_is_one_along_and_minus_one_against_the_text():
    src = torch.stack([_plane(0.0)])
    along = M.clip_directional_similarity(src, torch.stack([_plane(40.0)]), _plane(0.0), _plane(40.0))
    against = M.clip_directional_similarity(src, torch.stack([_plane(-40.0)]), _plane(0.0), _plane(40.0))
    # chords from angle 0 to +-40 deg point along +110 and -110 deg (220 deg apart); a swapped edit is reversed
    reverse = M.clip_directional_similarity(torch.stack([_plane(40.0)]), src, _plane(0.0), _plane(40.0))
    assert along.item() == pytest.approx(1.0, abs=1e-12)
    assert against.item() == pytest.approx(-math.cos(math.radians(40.0)), abs=1e-12)
    assert reverse.item() == pytest.approx(-1.0, abs=1e-12)


def test_directional_similarity_is_invariant_to_a_common_rotation():
    gen = torch.Generator().manual_seed(0)
    src, edit = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    t0, t1 = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))
    before = M.clip_directional_similarity(src, edit, t0, t1)
    after = M.clip_directional_similarity(src.double() @ q.T, edit.double() @ q.T, t0.double() @ q.T, t1.double() @ q.T)
    assert torch.allclose(before, after, atol=1e-10)
    assert before.abs().max() < 1.0  # random directions: not trivially +-1


def test_identical_images_give_undefined_not_zero_and_means_skip_them():
    src = torch.stack([_plane(0.0), _plane(10.0), _plane(20.0)])
    edit = src.clone()
    edit[1] = _plane(50.0)  # only frame 1 changes
    d = M.clip_directional_similarity(src, edit, _plane(0.0), _plane(90.0))
    assert torch.isnan(d[0]) and torch.isnan(d[2])
    assert math.isfinite(d[1].item())
    s = M.summarize(d)
    assert (s.count, s.undefined) == (1, 2)
    assert s.mean == pytest.approx(d[1].item())
    assert s.std == 0.0

    all_same = M.summarize(M.clip_directional_similarity(src, src.clone(), _plane(0.0), _plane(90.0)))
    assert all_same.mean is None and all_same.count == 0 and all_same.undefined == 3


def test_float32_noise_counts_as_no_change_but_a_real_edit_does_not():
    src = torch.stack([_plane(0.0)]).float()
    noisy = src + 1e-7
    assert torch.isnan(M.clip_directional_similarity(src, noisy, _plane(0.0), _plane(30.0))).all()
    small_edit = torch.stack([_plane(0.5)]).float()  # ~0.009 change, well above the tolerance
    assert torch.isfinite(M.clip_directional_similarity(src, small_edit, _plane(0.0), _plane(30.0))).all()


def test_identical_captions_make_directional_undefined():
    src, edit = torch.stack([_plane(0.0)]), torch.stack([_plane(30.0)])
    assert torch.isnan(M.clip_directional_similarity(src, edit, _plane(10.0), _plane(10.0) * 2)).all()


def test_direction_consistency_compares_consecutive_change_directions():
    # Frames 0 and 1 change the same way (cos 1); frame 2 rotates the other way: chords at +105 and -105 deg.
    src = torch.stack([_plane(0.0), _plane(0.0), _plane(0.0), _plane(0.0)])
    edit = torch.stack([_plane(30.0), _plane(30.0, scale=2.0), _plane(-30.0), _plane(0.0)])
    got = M.clip_direction_consistency(src, edit)
    assert got.shape == (3,)
    assert got[0].item() == pytest.approx(1.0, abs=1e-12)
    assert got[1].item() == pytest.approx(math.cos(math.radians(210.0)), abs=1e-12)
    assert torch.isnan(got[2])  # frame 3 unchanged


def test_image_consistency_of_a_steady_rotation_is_the_step_cosine():
    edit = torch.stack([_plane(k * 12.0, scale=1.0 + k) for k in range(5)])
    got = M.clip_image_consistency(edit)
    assert got.shape == (4,)
    assert torch.allclose(got, torch.full((4,), math.cos(math.radians(12.0)), dtype=torch.float64), atol=1e-12)


def test_image_similarity_to_source():
    src = torch.stack([_plane(0.0), _plane(90.0)])
    edit = torch.stack([_plane(60.0), _plane(90.0)])
    got = M.clip_image_similarity(src, edit)
    assert got[0].item() == pytest.approx(0.5, abs=1e-12)
    assert got[1].item() == pytest.approx(1.0, abs=1e-12)


def test_a_single_frame_has_empty_consecutive_metrics():
    one = torch.stack([_plane(0.0)])
    assert M.clip_image_consistency(one).numel() == 0
    assert M.clip_direction_consistency(one, torch.stack([_plane(5.0)])).numel() == 0
    s = M.summarize(M.clip_image_consistency(one))
    assert s.mean is None and s.count == 0 and s.undefined == 0


def test_psnr_by_hand_and_identical_frames_are_infinite():
    src = torch.zeros(3, 4, 4, 3)
    edit = src.clone()
    edit[0] += 0.1  # mse 0.01 -> 20 dB
    edit[1, :2] += 0.5  # half the pixels off by 0.5: mse 0.125 -> 10 log10(8) dB
    got = M.psnr(src, edit)
    assert got[0].item() == pytest.approx(20.0, abs=1e-6)
    assert got[1].item() == pytest.approx(10 * math.log10(8.0), abs=1e-9)
    assert math.isinf(got[2].item()) and got[2].item() > 0
    s = M.summarize(got)
    assert (s.count, s.undefined) == (2, 1)
    assert s.mean == pytest.approx((20.0 + 10 * math.log10(8.0)) / 2, abs=1e-6)
    assert M.psnr(src * 255, edit * 255, max_value=255.0)[0].item() == pytest.approx(20.0, abs=1e-6)


def test_safe_cosine_edge_cases():
    z = torch.zeros(3)
    x = torch.tensor([1.0, 2.0, 2.0])
    assert torch.isnan(M.safe_cosine(z, x))
    assert torch.isnan(M.safe_cosine(x, x * 1e-6))  # below the tolerance in norm
    assert M.safe_cosine(x, 5 * x).item() == pytest.approx(1.0, abs=1e-12)
    assert M.safe_cosine(x, -x).item() == pytest.approx(-1.0, abs=1e-12)
    assert M.safe_cosine(x, torch.tensor([2.0, -1.0, 0.0])).item() == pytest.approx(0.0, abs=1e-12)


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        M.clip_directional_similarity(torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(4), torch.ones(4))
    with pytest.raises(ValueError, match="shape"):
        M.clip_direction_consistency(torch.zeros(2, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="shape"):
        M.psnr(torch.zeros(2, 4, 4, 3), torch.zeros(2, 4, 5, 3))


def test_summarize_statistics():
    s = M.summarize(torch.tensor([1.0, 3.0, float("nan"), 5.0, float("-inf")]))
    assert (s.mean, s.min, s.max, s.count, s.undefined) == (3.0, 1.0, 5.0, 3, 2)
    assert s.std == pytest.approx(math.sqrt(8.0 / 3.0))
