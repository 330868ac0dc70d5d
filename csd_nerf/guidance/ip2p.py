"""InstructPix2Pix guidance: prompt embeddings, source encodings and batched CSD-Edit residuals.

The residual is CSD-Edit's (Kim et al. 2023, Eq. 9; ``docs/DESIGN.md`` §1 step 3): the instruction-guided noise
estimate of the view minus the image-conditional estimate of its source, under the same timestep and noise.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from csd_nerf.guidance.components import IP2PComponents
from csd_nerf.guidance.grad_scale import GradientScale
from csd_nerf.guidance.loading import DEFAULT_MODEL, load_ip2p_components, resolve_dtype
from csd_nerf.guidance.stats import GuidanceOutput, GuidanceStats
from csd_nerf.guidance.tiny import TINY_MODEL_NAME, TINY_NOTICE

Baseline = Literal["image", "noise"]


@dataclass
class GuidanceConfig:
    """Which IP2P to load, where, and how to batch it."""

    model: str = DEFAULT_MODEL
    """Hub id, local diffusers folder, or ``tiny`` (miniature random model for offline smoke runs)."""
    device: str = "cpu"
    dtype: str = "float32"
    """``float32``, ``float16``, or ``auto`` (float16 on CUDA, else float32) for UNet, VAE and text encoder."""
    reference_conditioning: bool = False
    """Condition IP2P on the scaled source latent, as the official CSD code does (about 5.5x weaker than IP2P's
    training); off uses IP2P's own unscaled ``latent_dist.mode()``."""
    max_unet_batch: int = 0
    """Most samples per UNet call (0: all 5N in one call)."""

    def setup(self) -> IP2PGuidance:
        return IP2PGuidance(self)


class IP2PGuidance:
    """InstructPix2Pix as a score-distillation prior."""

    def __init__(self, config: GuidanceConfig, components: IP2PComponents | None = None) -> None:
        """Load ``config.model``, or wrap already-built ``components`` (benchmarks' random-weight presets)."""
        self.config = config
        self.device = torch.device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        if components is None:
            parts = load_ip2p_components(config.model, self.device, self.dtype)
        else:
            parts = components
            for net in (parts.unet, parts.vae, parts.text_encoder):
                net.to(self.device).eval().requires_grad_(False)
                if net.dtype != self.dtype:
                    net.to(self.dtype)
        self.unet, self.vae = parts.unet, parts.vae
        self.text_encoder, self.tokenizer = parts.text_encoder, parts.tokenizer
        self.alphas_cumprod = parts.scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.num_train_timesteps = int(parts.scheduler.config.num_train_timesteps)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        # Each VAE down block but the last halves the image: diffusers' ``vae_scale_factor`` (8 for SD).
        self.latent_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.stats = GuidanceStats()
        self.gradient_scaling = True
        """Scale gradients through a float16 VAE (off only to measure what it saves)."""
        self.gradient_headroom = GradientScale.DEFAULT_TARGET
        """The largest gradient entry the scale aims for inside the float16 VAE; halved by :meth:`back_off`."""
        self._prompt_cache: dict[str, torch.Tensor] = {}

    @property
    def name(self) -> str:
        """The model as the user gave it (hub id, folder or ``tiny``)."""
        return self.config.model

    @property
    def is_tiny(self) -> bool:
        return self.config.model == TINY_MODEL_NAME

    @property
    def notice(self) -> str | None:
        """A warning every output made with this prior must carry, or None."""
        return TINY_NOTICE if self.is_tiny else None

    @contextmanager
    def _timed(self, counter: str) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            setattr(self.stats, counter, getattr(self.stats, counter) + time.perf_counter() - start)

    @torch.no_grad()
    def prompt_embeddings(self, prompt: str) -> torch.Tensor:
        """CLIP text embeddings ``[1, L, D]`` of ``prompt`` (``""`` is the unconditional one), cached per text."""
        if prompt not in self._prompt_cache:
            self._warn_if_truncated(prompt)
            tokens = self.tokenizer(
                [prompt],
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            hidden = self.text_encoder(tokens.input_ids.to(self.device))[0]
            self._prompt_cache[prompt] = hidden.to(self.dtype)
        return self._prompt_cache[prompt]

    def _warn_if_truncated(self, prompt: str) -> None:
        """CLIP sees at most ``model_max_length`` tokens (77, start and end included): say so once per prompt."""
        limit = self.tokenizer.model_max_length
        count = len(self.tokenizer(prompt, truncation=False).input_ids)
        if count > limit:
            warnings.warn(
                f"the prompt has {count} tokens and CLIP reads only the first {limit}: the rest is ignored "
                f"(shorten it to keep every word)",
                UserWarning,
                stacklevel=3,
            )

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] in [0, 1], got {tuple(images.shape)}")
        factor = self.latent_factor
        if images.shape[-1] % factor or images.shape[-2] % factor:
            raise ValueError(f"image sides must be multiples of {factor} for the VAE, got {tuple(images.shape[-2:])}")

    def _latent_dist(self, images: torch.Tensor, scale: GradientScale | None = None):
        self._check_images(images)
        self.stats.vae_encode_calls += 1
        x = (images * 2.0 - 1.0).to(self.device)
        if scale is not None:
            x = scale.leave(x)
        with self._timed("vae_seconds"):
            return self.vae.encode(x.to(self.dtype)).latent_dist

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable SD latents (``mode() * scaling``) of images in ``[0, 1]``; gradients reach ``images``.

        Through a float16 VAE the gradient is carried with power-of-two scaling (see :mod:`.grad_scale`). The
        scale is entered on the float32 side of the cast: entered before it, autograd would cast the float32
        latent gradient to float16 unscaled, the very flush to zero the scaling exists to prevent.
        """
        scale = GradientScale(self.gradient_headroom) if self.gradient_scaling and self.dtype == torch.float16 else None
        mode = self._latent_dist(images, scale).mode().float()
        if scale is not None:
            mode = scale.enter(mode)
        return mode * self.scaling_factor

    def back_off(self) -> str | None:
        """After a non-finite gradient: halve the float16 gradient scale's headroom (as a GradScaler backs off)."""
        if self.dtype != torch.float16 or not self.gradient_scaling:
            return None
        self.gradient_headroom = max(self.gradient_headroom / 2.0, 1.0)
        return f"the float16 gradient scale now aims at {self.gradient_headroom:g}"

    @torch.no_grad()
    def encode_source(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source latents ``zs`` and IP2P image conditioning ``c`` of images in ``[0, 1]`` (float32, no graph)."""
        mode = self._latent_dist(images).mode().float()
        latents = mode * self.scaling_factor
        return latents, latents.clone() if self.config.reference_conditioning else mode

    def conditioning_from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The image conditioning matching ``encode_source`` for already-encoded source latents."""
        return latents.clone() if self.config.reference_conditioning else latents / self.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in ``[0, 1]`` from SD latents."""
        with self._timed("vae_seconds"):
            images = self.vae.decode((latents / self.scaling_factor).to(self.device, self.dtype)).sample
        return (images.float() / 2.0 + 0.5).clamp(0.0, 1.0)

    @torch.no_grad()
    def residuals(
        self,
        noisy_target: torch.Tensor,
        noisy_source: torch.Tensor,
        image_conditioning: torch.Tensor,
        timestep: int,
        noise: torch.Tensor,
        prompt: str,
        guidance_scale: float,
        image_guidance_scale: float,
        baseline: Baseline = "image",
    ) -> GuidanceOutput:
        """CSD-Edit residuals for N particles with 5 UNet evaluations each (3 with ``baseline="noise"``).

        ``E_tgt = eps(zt; u) + s_I (eps(zt; img) - eps(zt; u)) + s_T (eps(zt; txt) - eps(zt; img))``,
        ``E_src = eps(zst; u) + s_I (eps(zst; img) - eps(zst; u))`` (or ``noise`` for the SDS baseline),
        ``d = E_tgt - E_src``. All 5N samples go through the UNet in as few calls as ``max_unet_batch`` allows.
        """
        if baseline not in ("image", "noise"):
            raise ValueError(f"baseline must be 'image' or 'noise', got {baseline!r}")
        n = noisy_target.shape[0]
        zero = torch.zeros_like(image_conditioning)
        empty, instruction = self.prompt_embeddings(""), self.prompt_embeddings(prompt)
        # Branch order: target (u, img, txt), then source (u, img).
        latents = [noisy_target] * 3
        conditions = [zero, image_conditioning, image_conditioning]
        texts = [empty, empty, instruction]
        if baseline == "image":
            latents += [noisy_source] * 2
            conditions += [zero, image_conditioning]
            texts += [empty, empty]
        model_input = torch.cat([torch.cat(latents), torch.cat(conditions)], dim=1).to(self.device, self.dtype)
        text = torch.cat([emb.expand(n, -1, -1) for emb in texts])
        eps = self._unet(model_input, timestep, text).float().chunk(len(latents))

        target = eps[0] + image_guidance_scale * (eps[1] - eps[0]) + guidance_scale * (eps[2] - eps[1])
        if baseline == "image":
            source = eps[3] + image_guidance_scale * (eps[4] - eps[3])
        else:
            source = noise.float()
        return GuidanceOutput(residual=target - source, target_eps=target, unet_samples=model_input.shape[0])

    def _unet(self, model_input: torch.Tensor, timestep: int, text: torch.Tensor) -> torch.Tensor:
        total = model_input.shape[0]
        chunk = self.config.max_unet_batch if self.config.max_unet_batch > 0 else total
        t = torch.tensor(timestep, device=self.device)
        outputs = []
        with self._timed("unet_seconds"):
            for start in range(0, total, chunk):
                stop = min(start + chunk, total)
                outputs.append(self.unet(model_input[start:stop], t, encoder_hidden_states=text[start:stop]).sample)
                self.stats.unet_calls += 1
                self.stats.unet_samples += stop - start
        return torch.cat(outputs)
