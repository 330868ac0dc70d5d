"""The shared CSD-Edit step on a set of latents, with the miniature IP2P."""

from __future__ import annotations

import pytest
import torch

from csd_nerf.csd import csd_gradient
from csd_nerf.editor import CSDEditConfig, CSDEditor, ViewSampler
from csd_nerf.media.latents import LatentSetScene


def _scene(guidance, n: int = 4, seed: int = 0) -> LatentSetScene:
    images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return LatentSetScene(*guidance.encode_source(images))


def _editor(guidance, **overrides) -> CSDEditor:
    return CSDEditor(guidance, CSDEditConfig(prompt="make it snowy", **overrides))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(prompt="  "), "prompt is empty"),
        (dict(guidance_scale=-1.0), "--guidance-scale -1.0 is out of range"),
        (dict(image_guidance_scale=float("nan")), "--image-guidance-scale nan"),
        (dict(guidance_scale=1000.0), "out of range"),
        (dict(t_min=600, t_max=500), "timestep range"),
        (dict(t_max=1000), "timestep range"),
        (dict(num_particles=0), "--num-particles 0"),
        (dict(bandwidth_multiplier=0.0), "bandwidth"),
    ],
)
def test_bad_configuration_is_a_one_line_error(tiny_guidance, overrides, message):
    config = CSDEditConfig(prompt="make it snowy")
    for key, value in overrides.items():
        setattr(config, key, value)
    with pytest.raises(ValueError, match=message) as exc:
        CSDEditor(tiny_guidance, config)
    assert "\n" not in str(exc.value)


def test_messages_name_the_flags_as_the_user_typed_them():
    config = CSDEditConfig(prompt="make it snowy", guidance_scale=-1.0)
    with pytest.raises(ValueError, match=r"^--pipeline\.guidance-scale -1\.0 is out of range"):
        config.validate(flags="--pipeline.")


def test_assigning_settings_to_the_editor_validates_them(tiny_guidance):
    """The viewer replaces the editor's settings between steps: a bad value is refused there, not mid-step."""
    editor = _editor(tiny_guidance)
    with pytest.raises(ValueError, match="prompt is empty"):
        editor.config = CSDEditConfig(prompt=" ")
    assert editor.config.prompt == "make it snowy"


def test_zero_text_scale_at_the_source_gives_zero_gradient(tiny_guidance):
    scene = _scene(tiny_guidance, n=1)
    stats = _editor(tiny_guidance, guidance_scale=0.0, num_particles=1).step(scene, [0])
    assert stats.residual_norm < 1e-5
    assert scene.parameter.grad.abs().max() < 1e-6


def test_step_writes_the_csd_gradient_into_the_drawn_particles_only(tiny_guidance):
    scene = _scene(tiny_guidance, n=5)
    editor = _editor(tiny_guidance, num_particles=3, seed=3)
    stats = editor.step(scene, [4, 1, 2], keep_preview=True)
    grad = scene.parameter.grad
    assert grad[[0, 3]].abs().sum() == 0 and grad[[4, 1, 2]].abs().sum() > 0
    assert stats.unet_samples == 15 and stats.ids == [4, 1, 2]
    assert 20 <= stats.timestep <= 500
    assert stats.pred_original.shape == (3, 4, 4, 4)

    # Recompute the gradient from the same draws: the editor applies exactly csd_gradient of the residuals.
    zs, cond = scene.sources([4, 1, 2])
    a = tiny_guidance.alphas_cumprod[stats.timestep]
    noise = (stats.noisy_latents - a.sqrt() * scene.parameter[[4, 1, 2]].detach()) / (1 - a).sqrt()
    out = tiny_guidance.residuals(
        stats.noisy_latents,
        a.sqrt() * zs + (1 - a).sqrt() * noise,
        cond,
        stats.timestep,
        noise,
        "make it snowy",
        7.5,
        1.5,
    )
    expected = csd_gradient(stats.noisy_latents, out.residual, 1 - a)
    assert torch.allclose(grad[[4, 1, 2]], expected, atol=1e-5)


def test_same_seed_same_steps(tiny_guidance):
    grads = []
    for _ in range(2):
        scene = _scene(tiny_guidance, n=4)
        editor = _editor(tiny_guidance, seed=11)
        optimizer = torch.optim.SGD([scene.parameter], lr=2.0)
        for _ in range(3):
            editor.step(scene)
            optimizer.step()
            optimizer.zero_grad()
        grads.append(scene.parameter.detach().clone())
    assert torch.equal(grads[0], grads[1])


def test_prompt_change_takes_effect_at_the_next_step(tiny_guidance):
    scene = _scene(tiny_guidance, n=2)
    editor = _editor(tiny_guidance, num_particles=2, seed=5)
    editor.step(scene, [0, 1])
    first = scene.parameter.grad.clone()
    scene.parameter.grad = None
    editor.config.prompt = "make it a painting"
    editor.generator.manual_seed(5)
    editor.step(scene, [0, 1])
    assert not torch.allclose(first, scene.parameter.grad)


def test_sampler_draws_every_particle_once_per_epoch():
    sampler = ViewSampler(10, torch.Generator().manual_seed(0))
    draws = [sampler.draw(4) for _ in range(5)]
    assert all(len(set(d)) == 4 for d in draws)
    flat = [i for d in draws for i in d]
    assert sorted(flat[:10]) == list(range(10))
    assert ViewSampler(3, torch.Generator()).draw(8).__len__() == 3
