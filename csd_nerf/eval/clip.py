"""Loading CLIP (transformers, optionally OpenCLIP) and embedding frames and captions with it.

Model names:
    ``tiny``                      the miniature random CLIP of :mod:`csd_nerf.eval.tiny_clip` (offline, meaningless);
    ``open_clip:ARCH[:PRETRAINED]`` OpenCLIP (optional package), e.g. ``open_clip:ViT-bigG-14`` as in the CSD paper;
    anything else                 a Hugging Face hub id or a local folder for ``CLIPModel.from_pretrained``.
The CSD paper's ViT-bigG-14 is also on the hub in transformers format (``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from csd_nerf.errors import first_line
from csd_nerf.eval.errors import ClipLoadError, EvalInputError
from csd_nerf.eval.tiny_clip import TINY_CLIP_NAME, TINY_CLIP_WARNING, ensure_tiny_clip

__all__ = ["DEFAULT_CLIP_MODEL", "OPEN_CLIP_PREFIX", "ClipEmbedder", "load_clip", "quiet_hub_logging", "resolve_device"]

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
OPEN_CLIP_PREFIX = "open_clip:"
_OPEN_CLIP_DEFAULT_PRETRAINED = {"ViT-bigG-14": "laion2b_s39b_b160k"}
_TINY_HINT = "use --clip-model tiny only for an offline smoke test (meaningless scores)"


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; anything else goes to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise EvalInputError(f"invalid --device {device!r} ({err}). Use auto, cpu, cuda or cuda:N") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EvalInputError(f"--device {device} asked for CUDA but torch sees no GPU. Use --device cpu or auto")
    return dev


def quiet_hub_logging() -> None:
    """Silence Hub retry warnings and weight-loading bars (for command lines that promise one-line errors)."""
    # The libraries reset their root loggers when first imported, so import them before setting the level.
    try:
        from huggingface_hub.utils import logging as hub_logging
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hub_logging.set_verbosity_error()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _features(out: Any) -> torch.Tensor:
    # transformers 4 returns the projected features; transformers 5 wraps them in an output's pooler_output.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _first_line(err: BaseException, limit: int = 240) -> str:
    return f"{type(err).__name__}: {first_line(err, limit)}"


@dataclass
class ClipEmbedder:
    """A loaded CLIP with its preprocessing; embeds RGB uint8 frames and captions into its joint space.

    Attributes:
        name: the model name as given by the user.
        backend: ``transformers`` or ``open_clip``.
        meaningless: ``True`` for the miniature random model; results must carry ``TINY_CLIP_WARNING``.
    """

    name: str
    backend: str
    device: torch.device
    meaningless: bool
    _encode_images: Any = field(repr=False)
    _encode_texts: Any = field(repr=False)
    batch_size: int = 16

    @property
    def warning(self) -> str | None:
        """The warning every result made with this model must carry, if any."""
        return TINY_CLIP_WARNING if self.meaningless else None

    @torch.no_grad()
    def embed_images(self, frames: np.ndarray, progress: Any = None) -> torch.Tensor:
        """Unnormalised image embeddings ``[F, D]`` (float32, CPU) of ``[F, H, W, 3]`` uint8 frames."""
        out = []
        for start in range(0, len(frames), self.batch_size):
            batch = list(frames[start : start + self.batch_size])
            out.append(self._encode_images(batch).float().cpu())
            if progress is not None:
                progress(len(batch))
        return torch.cat(out)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Unnormalised text embeddings ``[len(texts), D]`` (float32, CPU)."""
        return self._encode_texts(list(texts)).float().cpu()


def _is_path_like(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else that looks like a path is treated as a folder.
    return (
        name.startswith((".", "/", "~"))
        or name.endswith("/")
        or "\\" in name
        or name.count("/") > 1
        or Path(name).expanduser().exists()
    )


def _load_transformers(name: str, device: torch.device, meaningless: bool, batch_size: int) -> ClipEmbedder:
    from transformers import CLIPModel, CLIPProcessor

    source = name
    if meaningless:
        source = str(ensure_tiny_clip())
    elif _is_path_like(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise ClipLoadError(
                f"cannot load CLIP model {name!r}: folder not found. Fix: pass an existing folder saved with "
                f"CLIPModel/CLIPProcessor.save_pretrained, or a hub id such as {DEFAULT_CLIP_MODEL}; {_TINY_HINT}"
            )
        source = str(folder)
    try:
        model = CLIPModel.from_pretrained(source).to(device).eval()
        processor = CLIPProcessor.from_pretrained(source)
    except Exception as err:  # hub, filesystem and config errors come in many types; all mean "cannot load"
        where = "local folder" if _is_path_like(name) else "hub id"
        raise ClipLoadError(
            f"cannot load CLIP model {name!r} ({where}; {_first_line(err)}). Fix: check the name, connect to the "
            f"Hugging Face hub or pre-download it (hf download {name}) and unset HF_HUB_OFFLINE, or pass a local "
            f"folder saved with save_pretrained; {_TINY_HINT}"
        ) from err
    max_len = int(getattr(model.config.text_config, "max_position_embeddings", 77))

    def encode_images(batch: list[np.ndarray]) -> torch.Tensor:
        pixels = processor(images=batch, return_tensors="pt")["pixel_values"].to(device, model.dtype)
        return _features(model.get_image_features(pixel_values=pixels))

    def encode_texts(texts: list[str]) -> torch.Tensor:
        tokens = processor.tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return _features(model.get_text_features(**{k: v.to(device) for k, v in tokens.items()}))

    return ClipEmbedder(name, "transformers", device, meaningless, encode_images, encode_texts, batch_size)


def _load_open_clip(name: str, device: torch.device, batch_size: int) -> ClipEmbedder:
    spec = name[len(OPEN_CLIP_PREFIX) :]
    arch, _, pretrained = spec.partition(":")
    pretrained = pretrained or _OPEN_CLIP_DEFAULT_PRETRAINED.get(arch, "")
    if not arch or not pretrained:
        raise ClipLoadError(
            f"cannot load CLIP model {name!r}: write it as open_clip:ARCH:PRETRAINED "
            "(e.g. open_clip:ViT-bigG-14:laion2b_s39b_b160k)"
        )
    try:
        import open_clip
    except ImportError as err:
        raise ClipLoadError(
            f"cannot load CLIP model {name!r}: the optional package open_clip is not installed. Fix: "
            "pip install open_clip_torch, or use the transformers port laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
        ) from err
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(arch)
    except Exception as err:
        raise ClipLoadError(
            f"cannot load CLIP model {name!r} ({_first_line(err)}). Fix: check ARCH/PRETRAINED against "
            "open_clip.list_pretrained() and make sure the weights can be downloaded or are cached"
        ) from err
    model.eval()
    from PIL import Image

    def encode_images(batch: list[np.ndarray]) -> torch.Tensor:
        pixels = torch.stack([preprocess(Image.fromarray(f)) for f in batch]).to(device)
        return model.encode_image(pixels)

    def encode_texts(texts: list[str]) -> torch.Tensor:
        return model.encode_text(tokenizer(texts).to(device))

    return ClipEmbedder(name, "open_clip", device, False, encode_images, encode_texts, batch_size)


def load_clip(
    name: str = DEFAULT_CLIP_MODEL, device: str | torch.device = "auto", batch_size: int = 16
) -> ClipEmbedder:
    """Load a CLIP embedder by name (see the module docstring).

    Raises:
        ClipLoadError: with a one-line message saying how to fix it.
    """
    if not name or not name.strip():
        raise ClipLoadError(f"empty CLIP model name. Fix: pass a hub id such as {DEFAULT_CLIP_MODEL} or a local folder")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if name.startswith(OPEN_CLIP_PREFIX):
        return _load_open_clip(name, dev, batch_size)
    return _load_transformers(name, dev, name == TINY_CLIP_NAME, batch_size)
