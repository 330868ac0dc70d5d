"""The known-answer test prior: its residual, its fixed point, and convergence through the real editor."""

from __future__ import annotations

import torch

from csd_nerf.editor import CSDEditConfig, CSDEditor
from csd_nerf.guidance.known_answer import KnownAnswerPrior, sd_alphas_cumprod
from csd_nerf.media.latents import LatentSetScene


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 16, 24, generator=torch.Generator().manual_seed(seed))


def test_it_is_a_prior_as_ip2p_is(tiny_guidance):
    from csd_nerf.editor import Prior

    assert isinstance(KnownAnswerPrior(), Prior) and isinstance(tiny_guidance, Prior)


def test_schedule_is_stable_diffusions(tiny_guidance):
    torch.testing.assert_close(sd_alphas_cumprod(), tiny_guidance.alphas_cumprod.cpu())


def test_pixel_latents_are_exactly_invertible():
    prior = KnownAnswerPrior()
    images = _images(2, 0)
    latents = prior.encode_images(images)
    assert latents.shape == (2, 3 * 64, 2, 3) and prior.latent_factor == 8
    torch.testing.assert_close(prior.decode_latents(latents), images, atol=1e-6, rtol=0)


def test_residual_is_the_perfect_denoisers_and_vanishes_at_the_target():
    targets = _images(3, 1)
    prior = KnownAnswerPrior()
    sources = prior.encode_images(_images(3, 0))
    z_star, conditioning = prior.encode_source(targets)  # conditioned on the target: it pulls toward it
    torch.testing.assert_close(conditioning, z_star)
    t, noise = 300, torch.randn(sources.shape, generator=torch.Generator().manual_seed(2))
    a = prior.alphas_cumprod[t]
    for z, expected_zero in ((sources, False), (z_star, True)):
        noisy = a.sqrt() * z + (1 - a).sqrt() * noise
        out = prior.residuals(noisy, noisy, conditioning, t, noise)
        torch.testing.assert_close(out.residual, (a / (1 - a)).sqrt() * (z - z_star), atol=1e-4, rtol=1e-4)
        assert (out.residual.abs().max() < 1e-4) == expected_zero


def test_the_editor_drives_every_view_to_its_target_with_and_without_coupling():
    """Gradient descent on the CSD gradient of this prior converges to the targets: the fixed point is known."""
    sources, targets = _images(4, 0), _images(4, 1)
    for coupling in (True, False):
        prior = KnownAnswerPrior()
        # Starts at the sources, conditioned on the targets.
        scene = LatentSetScene(prior.encode_images(sources), prior.encode_source(targets)[1])
        editor = CSDEditor(prior, CSDEditConfig(prompt="known answer", num_particles=4, coupling=coupling))
        optimizer = torch.optim.Adam([scene.parameter], lr=0.05)
        start = (prior.decode_latents(scene.parameter) - targets).abs().mean()
        for _ in range(300):
            optimizer.zero_grad()
            editor.step(scene)
            optimizer.step()
        error = (prior.decode_latents(scene.parameter.detach()) - targets).abs().mean()
        assert error < 0.05 * start, (coupling, float(start), float(error))
