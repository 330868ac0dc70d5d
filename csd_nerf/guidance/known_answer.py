"""The known-answer prior: a test instrument whose fixed point is known, never an editing prior for users.

Each view ``i`` of a scene has a target image ``x*_i`` seen by the same camera (an edited version of the scene),
and the prior is conditioned on it where IP2P is conditioned on the source image: a scene's conditioning images
are the targets (``condition_on`` of the 3D scenes; the conditioning rows of a latent-set scene). The prior
answers as a perfect denoiser of the image it is conditioned on would: for ``z_t = sqrt(a_t) z + sqrt(1 - a_t) e`` it
predicts ``e_hat = (z_t - sqrt(a_t) z*) / sqrt(1 - a_t)``, so the CSD-Edit residual against the noise is

    d_i = e_hat_i - e_i = sqrt(a_t / (1 - a_t)) (z_i - z*_i)

and the distilled gradient ``w(t) d_i = sqrt(a_t (1 - a_t)) (z_i - z*_i)`` pulls every view's latent toward its
target's. Driven through the same scene, editor and backpropagation as InstructPix2Pix, it measures whether a
whole 3D edit converges to what a prior asks for, consistently across views, and whether the machinery does
harm when the target is the source.

Latents are either an invertible 8x8 space-to-depth of the image (``encoder="pixels"``: the fixed point is
exactly the target images) or a VAE's (``encoder="vae"``, e.g. the miniature IP2P's: the real encoder path).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
import torch.nn.functional as F

from csd_nerf.guidance.stats import GuidanceOutput, GuidanceStats

__all__ = ["KnownAnswerPrior", "sd_alphas_cumprod", "KNOWN_ANSWER_NOTICE"]

KNOWN_ANSWER_NOTICE = (
    "the known-answer test prior pulls every view toward a given target image of its camera: "
    "this is a convergence check, not a text edit"
)


def sd_alphas_cumprod(num_train_timesteps: int = 1000) -> torch.Tensor:
    """Stable Diffusion's noise schedule (scaled-linear betas 0.00085..0.012), as IP2P's scheduler has it."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


class KnownAnswerPrior:
    """A :class:`~csd_nerf.editor.Prior` that pulls each view toward the image it is conditioned on.

    Args:
        encoder: ``pixels`` (invertible space-to-depth, latent factor 8) or ``vae`` (``vae`` must be given).
        vae: an ``AutoencoderKL`` for ``encoder="vae"``.
        device: where the latents live.
    """

    notice = KNOWN_ANSWER_NOTICE

    def __init__(
        self, encoder: Literal["pixels", "vae"] = "pixels", vae: Any = None, device: str | torch.device = "cpu"
    ) -> None:
        if encoder not in ("pixels", "vae"):
            raise ValueError(f"encoder {encoder!r}: use 'pixels' or 'vae'")
        if encoder == "vae" and vae is None:
            raise ValueError("encoder='vae' needs a vae")
        self.encoder = encoder
        self.name = f"known-answer ({encoder})"
        self.device = torch.device(device)
        self.vae = vae.to(self.device).eval().requires_grad_(False) if vae is not None else None
        self.alphas_cumprod = sd_alphas_cumprod().to(self.device)
        self.num_train_timesteps = len(self.alphas_cumprod)
        if self.vae is not None:
            self.scaling_factor = float(self.vae.config.scaling_factor)
            self.latent_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        else:
            self.scaling_factor, self.latent_factor = 1.0, 8
        self.stats = GuidanceStats()

    # -- the encoder ------------------------------------------------------------------------------------------

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable latents of images ``[B, 3, H, W]`` in ``[0, 1]``."""
        start = time.perf_counter()
        self.stats.vae_encode_calls += 1
        x = images.to(self.device, torch.float32) * 2.0 - 1.0
        if self.vae is None:
            latents = F.pixel_unshuffle(x, self.latent_factor)
        else:
            latents = self.vae.encode(x).latent_dist.mode().float() * self.scaling_factor
        self.stats.vae_seconds += time.perf_counter() - start
        return latents

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in ``[0, 1]`` from latents (exact for ``pixels``)."""
        if self.vae is None:
            images = F.pixel_shuffle(latents.float(), self.latent_factor)
        else:
            images = self.vae.decode(latents.float() / self.scaling_factor).sample.float()
        return (images / 2.0 + 0.5).clamp(0.0, 1.0)

    @torch.no_grad()
    def encode_source(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents of images and, as their conditioning, the same latents: conditioned on a target image, the
        prior pulls toward it."""
        latents = self.encode_images(images)
        return latents, latents.clone()

    def back_off(self) -> None:
        """Nothing to lower: the encoder runs in float32."""
        return None

    # -- the residual -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def residuals(
        self,
        noisy_target: torch.Tensor,
        noisy_source: torch.Tensor,
        image_conditioning: torch.Tensor,
        timestep: int,
        noise: torch.Tensor,
        prompt: str = "",
        guidance_scale: float = 0.0,
        image_guidance_scale: float = 0.0,
        baseline: str = "image",
    ) -> GuidanceOutput:
        """``d = e_hat - e`` with ``e_hat`` the perfect denoiser of the image conditioned on (the target).

        Prompt and scales are ignored; both baselines coincide (a perfect denoiser of the source returns ``e``).
        """
        a = self.alphas_cumprod[timestep]
        target_eps = (noisy_target.float() - a.sqrt() * image_conditioning.float()) / (1 - a).sqrt()
        return GuidanceOutput(residual=target_eps - noise.float(), target_eps=target_eps, unet_samples=0)
