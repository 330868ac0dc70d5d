"""The SVGD coupling (``docs/DESIGN.md`` §1 step 4), held to its invariants."""

from __future__ import annotations

import math

import pytest
import torch

from csd_nerf.csd import csd_gradient, median_bandwidth, pairwise_sq_dists, rbf_kernel


def _particles(n: int, seed: int = 0, shape=(4, 8, 8)) -> torch.Tensor:
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


def test_bandwidth_is_lower_median_of_off_diagonal_over_log_n_plus_one():
    x = _particles(4)
    d = pairwise_sq_dists(x)
    pairs = sorted(float(d[i, j]) for i in range(4) for j in range(i + 1, 4))
    # 12 off-diagonal entries = 6 distinct values twice; the lower of the two middle ones is the 3rd distinct value.
    assert median_bandwidth(d).item() == pytest.approx(pairs[2] / math.log(5), rel=1e-6)


def test_two_particles_use_their_distance_not_the_zero_diagonal():
    x = _particles(2)
    kernel, _ = rbf_kernel(x)
    assert kernel[0, 1].item() == pytest.approx(1 / 3, rel=1e-5)  # exp(-D / (D / log 3))
    assert torch.allclose(kernel.diagonal(), torch.ones(2))


def test_repulsion_equals_autograd_of_the_kernel():
    x = _particles(5).double()
    _, repulsion = rbf_kernel(x)
    h = median_bandwidth(pairwise_sq_dists(x)).double()
    expected = torch.zeros_like(x)
    for i in range(5):
        xj = x.clone().requires_grad_(True)
        k_sum = torch.exp(-((xj - x[i].detach()) ** 2).flatten(1).sum(1) / h).sum()  # sum_j k(x_j, x_i)
        (grad,) = torch.autograd.grad(k_sum, xj)
        expected[i] = grad.sum(0)  # sum_j grad_{x_j} k(x_j, x_i)
    assert torch.allclose(repulsion.double(), expected, rtol=1e-4, atol=1e-8)


def test_single_particle_reduces_to_the_single_particle_formula():
    x, d = _particles(1), _particles(1, seed=1)
    kernel, repulsion = rbf_kernel(x)
    assert kernel.tolist() == [[1.0]] and not repulsion.any()
    assert torch.equal(csd_gradient(x, d, 0.3), 0.3 * d)


def test_identical_particles_receive_the_mean_residual():
    x = _particles(1).expand(4, -1, -1, -1).clone()
    d = _particles(4, seed=2)
    kernel, repulsion = rbf_kernel(x)
    assert torch.equal(kernel, torch.ones(4, 4)) and not repulsion.any()
    g = csd_gradient(x, d, 0.5)
    for i in range(4):
        assert torch.allclose(g[i], 0.5 * d.mean(0), atol=1e-6)


def test_permuting_particles_permutes_gradients():
    x, d = _particles(6), _particles(6, seed=3)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert torch.allclose(csd_gradient(x, d, 0.7)[perm], csd_gradient(x[perm], d[perm], 0.7), atol=1e-6)


def test_far_apart_particles_update_independently():
    # A tiny bandwidth puts every pair far apart relative to it: K ~ I and the repulsion vanishes.
    x, d = _particles(4), _particles(4, seed=4)
    kernel, repulsion = rbf_kernel(x, bandwidth_multiplier=1e-3)
    assert torch.allclose(kernel, torch.eye(4), atol=1e-12)
    assert repulsion.abs().max() < 1e-12
    assert torch.allclose(csd_gradient(x, d, 0.2, bandwidth_multiplier=1e-3), 0.2 / 4 * d, atol=1e-7)


def test_coupling_off_is_identity_kernel_without_repulsion():
    x, d = _particles(3), _particles(3, seed=5)
    assert torch.allclose(csd_gradient(x, d, 0.4, coupling=False), 0.4 / 3 * d)


def test_gradient_matches_the_formula_and_repels():
    x, d = _particles(3), _particles(3, seed=6)
    kernel, repulsion = rbf_kernel(x)
    expected = 0.9 / 3 * (torch.einsum("ij,j...->i...", kernel, d) - repulsion)
    assert torch.allclose(csd_gradient(x, d, 0.9), expected, atol=1e-6)
    # With zero residuals, a descent step along -g moves particles apart.
    g = csd_gradient(x, torch.zeros_like(d), 1.0)
    assert pairwise_sq_dists(x - 0.01 * g).sum() > pairwise_sq_dists(x).sum()


def test_half_precision_inputs_are_computed_in_float32_and_returned_in_kind():
    x, d = _particles(4).half(), _particles(4, seed=7).half()
    g = csd_gradient(x, d, 0.5)
    assert g.dtype == torch.float16
    assert torch.allclose(g.float(), csd_gradient(x.float(), d.float(), 0.5), atol=1e-3)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ"):
        csd_gradient(_particles(2), _particles(3), 1.0)
