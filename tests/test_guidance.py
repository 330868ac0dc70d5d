"""IP2P guidance with the miniature model: the real diffusers code path, loaded through from_pretrained."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

from csd_nerf.guidance import GuidanceConfig, GuidanceLoadError, IP2PGuidance, SourceCache
from csd_nerf.guidance.loading import load_ip2p_components
from csd_nerf.guidance.tiny import build_tiny_ip2p, tiny_components


def _inputs(guidance: IP2PGuidance, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    zs, cond = guidance.encode_source(torch.rand(n, 3, 32, 32, generator=g))
    z = zs + 0.1 * torch.randn(zs.shape, generator=g)
    noise = torch.randn(zs.shape, generator=g)
    a = guidance.alphas_cumprod[300]
    return a.sqrt() * z + (1 - a).sqrt() * noise, a.sqrt() * zs + (1 - a).sqrt() * noise, cond, noise


def test_round_trip_through_from_pretrained_keeps_every_weight(tmp_path):
    path = build_tiny_ip2p(tmp_path / "tiny", seed=0)
    assert (path / "model_index.json").exists() and (path / "unet" / "config.json").exists()
    loaded = load_ip2p_components(str(path))
    built = tiny_components(seed=0)
    for name in ("unet", "vae", "text_encoder"):
        ref = getattr(built, name).state_dict()
        got = getattr(loaded, name).state_dict()
        assert ref.keys() == got.keys()
        assert all(torch.equal(ref[k], got[k]) for k in ref), name
    assert loaded.unet.config.in_channels == 8
    assert loaded.tokenizer("a bear").input_ids == built.tokenizer("a bear").input_ids


def test_residual_equals_three_branch_formula_by_hand(tiny_guidance):
    zt, zst, cond, noise = _inputs(tiny_guidance, 3)
    s_t, s_i, t = 7.5, 1.5, 300
    out = tiny_guidance.residuals(zt, zst, cond, t, noise, "make it snowy", s_t, s_i)

    unet = tiny_guidance.unet
    empty = tiny_guidance.prompt_embeddings("").expand(3, -1, -1)
    text = tiny_guidance.prompt_embeddings("make it snowy").expand(3, -1, -1)

    def eps(latent, c, emb):
        return unet(torch.cat([latent, c], dim=1), t, encoder_hidden_states=emb).sample

    with torch.no_grad():
        zero = torch.zeros_like(cond)
        e_tgt = eps(zt, zero, empty) + s_i * (eps(zt, cond, empty) - eps(zt, zero, empty))
        e_tgt = e_tgt + s_t * (eps(zt, cond, text) - eps(zt, cond, empty))
        e_src = eps(zst, zero, empty) + s_i * (eps(zst, cond, empty) - eps(zst, zero, empty))
    assert torch.allclose(out.target_eps, e_tgt, atol=1e-5)
    assert torch.allclose(out.residual, e_tgt - e_src, atol=1e-5)


def test_noise_baseline_is_plain_sds(tiny_guidance):
    zt, zst, cond, noise = _inputs(tiny_guidance, 2)
    image = tiny_guidance.residuals(zt, zst, cond, 200, noise, "x", 7.5, 1.5)
    plain = tiny_guidance.residuals(zt, zst, cond, 200, noise, "x", 7.5, 1.5, baseline="noise")
    assert torch.allclose(plain.target_eps, image.target_eps, atol=1e-5)
    assert torch.equal(plain.residual, plain.target_eps - noise)
    assert plain.unet_samples == 3 * 2


@pytest.mark.parametrize("n, max_batch, calls", [(1, 0, 1), (4, 0, 1), (4, 6, 4), (3, 5, 3)])
def test_five_unet_evaluations_per_particle_in_few_calls(n, max_batch, calls):
    guidance = GuidanceConfig(model="tiny", max_unet_batch=max_batch).setup()
    zt, zst, cond, noise = _inputs(guidance, n)
    guidance.stats.reset()
    out = guidance.residuals(zt, zst, cond, 100, noise, "x", 7.5, 1.5)
    assert guidance.stats.unet_samples == out.unet_samples == 5 * n
    assert guidance.stats.unet_calls == calls
    assert out.residual.shape == zt.shape


def test_batching_does_not_change_the_residual():
    unbatched = GuidanceConfig(model="tiny").setup()
    chunked = GuidanceConfig(model="tiny", max_unet_batch=2).setup()
    zt, zst, cond, noise = _inputs(unbatched, 3)
    a = unbatched.residuals(zt, zst, cond, 100, noise, "x", 7.5, 1.5).residual
    b = chunked.residuals(zt, zst, cond, 100, noise, "x", 7.5, 1.5).residual
    assert torch.allclose(a, b, atol=1e-5)


def test_zero_text_scale_at_the_source_gives_zero_residual(tiny_guidance):
    _, zst, cond, noise = _inputs(tiny_guidance, 4)
    out = tiny_guidance.residuals(zst, zst, cond, 250, noise, "anything", 0.0, 1.5)
    assert out.residual.abs().max() < 1e-5


def test_source_cache_encodes_each_particle_once(tiny_guidance):
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    calls = []

    def compute(ids):
        calls.append(ids)
        return tiny_guidance.encode_source(images[ids])

    cache = SourceCache(compute)
    before = tiny_guidance.stats.vae_encode_calls
    first = cache([0, 2, 3])
    again = cache([3, 0, 2])
    cache([1, 2])
    assert calls == [[0, 2, 3], [1]]
    assert tiny_guidance.stats.vae_encode_calls - before == 2
    assert torch.equal(first[0][2], again[0][0]) and cache.computed == 4


def test_conditioning_is_unscaled_mode_unless_reference_quirk(tiny_guidance):
    images = torch.rand(2, 3, 32, 32)
    latents, cond = tiny_guidance.encode_source(images)
    assert torch.allclose(cond * tiny_guidance.scaling_factor, latents, atol=1e-6)
    assert torch.allclose(tiny_guidance.conditioning_from_latents(latents), cond, atol=1e-5)
    reference = GuidanceConfig(model="tiny", reference_conditioning=True).setup()
    ref_latents, ref_cond = reference.encode_source(images)
    assert torch.allclose(ref_cond, ref_latents)


def test_encoding_is_differentiable_and_decoding_is_in_range(tiny_guidance):
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    tiny_guidance.encode_images(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    decoded = tiny_guidance.decode_latents(torch.randn(1, 4, 4, 4))
    assert decoded.shape == (1, 3, 32, 32) and 0 <= decoded.min() and decoded.max() <= 1


def test_prompt_embeddings_are_cached(tiny_guidance):
    a = tiny_guidance.prompt_embeddings("turn it blue")
    assert tiny_guidance.prompt_embeddings("turn it blue") is a
    assert not torch.equal(a, tiny_guidance.prompt_embeddings("turn it red"))


def test_float16_loads_and_runs():
    guidance = GuidanceConfig(model="tiny", dtype="float16").setup()
    assert guidance.unet.dtype == torch.float16
    zt, zst, cond, noise = _inputs(guidance, 2)
    out = guidance.residuals(zt, zst, cond, 100, noise, "x", 7.5, 1.5)
    assert out.residual.dtype == torch.float32 and torch.isfinite(out.residual).all()


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_unreachable_hub_model_gives_one_line_fix():
    with pytest.raises(GuidanceLoadError) as exc:
        load_ip2p_components("timbrooks/instruct-pix2pix")
    message = _one_line(exc)
    assert "hf download" in message and "'tiny'" in message


def test_missing_folder_gives_one_line_fix(tmp_path):
    with pytest.raises(GuidanceLoadError) as exc:
        load_ip2p_components(str(tmp_path / "nowhere"))
    assert "does not exist" in _one_line(exc)


def test_folder_without_model_parts_names_what_is_missing(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(GuidanceLoadError) as exc:
        load_ip2p_components(str(tmp_path))
    assert "missing vae, text_encoder, tokenizer, scheduler" in _one_line(exc)


def test_images_must_fit_the_vae(tiny_guidance):
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny_guidance.encode_source(torch.rand(1, 3, 30, 32))


def test_latent_factor_is_read_from_the_vae_config(tiny_guidance):
    assert tiny_guidance.latent_factor == 8 == 2 ** (len(tiny_guidance.vae.config.block_out_channels) - 1)
    assert tiny_guidance.encode_images(torch.rand(1, 3, 24, 40)).shape[-2:] == (3, 5)


def test_a_prompt_longer_than_clip_reads_warns_once(tiny_guidance):
    long_prompt = "make the " + "very " * 90 + "red ball blue"
    with pytest.warns(UserWarning, match="only the first 77") as record:
        tiny_guidance.prompt_embeddings(long_prompt)
        tiny_guidance.prompt_embeddings(long_prompt)  # cached: no second warning
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_guidance.prompt_embeddings("make it snowy")


def test_offline_hub_id_is_one_clean_line_with_a_quoted_command(tmp_path):
    """No hub deprecation warning before our message, and the suggested command can be pasted as is."""
    from PIL import Image

    Image.new("RGB", (64, 64), (90, 40, 20)).save(tmp_path / "p.png")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_HOME"] = str(tmp_path / "hf")  # an empty cache: the id is certainly not there
    args = ["panorama", "--input", str(tmp_path / "p.png"), "--output", str(tmp_path / "o"), "--prompt", "x"]
    proc = subprocess.run(
        [sys.executable, "-m", "csd_nerf.media.cli", *args, "--model", "someone/ip2p-copy", "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("csd-edit-2d: error:") and '"hf download someone/ip2p-copy --local-dir ip2p"' in lines[0]
    assert not (tmp_path / "o").exists()


def test_float16_vae_gradients_do_not_flush_to_zero():
    """Small latent gradients through a float16 VAE: scaled, they match float32 within 1 %; unscaled, they do not."""
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    upstream = 1e-5 * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))

    def pixel_gradient(guidance):
        x = images.clone().requires_grad_(True)
        guidance.encode_images(x).backward(upstream)
        return x.grad.double()

    reference = pixel_gradient(GuidanceConfig(model="tiny", dtype="float32").setup())
    half = GuidanceConfig(model="tiny", dtype="float16").setup()
    scaled = pixel_gradient(half)
    half.gradient_scaling = False
    plain = pixel_gradient(half)

    def relative_error(g):
        return float((g - reference).norm() / reference.norm())

    assert relative_error(scaled) < 0.01 and (scaled == 0).sum() == (reference == 0).sum()
    assert relative_error(plain) > 0.05 or (plain == 0).sum() > (reference == 0).sum()
