"""A miniature, randomly initialised CLIP with the real transformers architecture, for offline tests.

It is built once, saved with ``save_pretrained`` into a cache folder and always loaded back through
``from_pretrained``, so tests exercise the same loading path as real checkpoints. Its scores mean nothing.
"""

from __future__ import annotations

from pathlib import Path

from csd_nerf.cache import build_once
from csd_nerf.cache import cache_root as default_cache_root

__all__ = ["TINY_CLIP_NAME", "TINY_CLIP_WARNING", "tiny_clip_dir", "build_tiny_clip", "ensure_tiny_clip"]

TINY_CLIP_NAME = "tiny"
TINY_CLIP_WARNING = "clip model 'tiny' is a randomly initialised miniature CLIP for offline smoke tests: every score it gives is meaningless"
# Bump when the recipe below changes so stale caches are rebuilt instead of reused.
_RECIPE = "tiny-clip-v1"


def tiny_clip_dir(cache_root: str | Path | None = None) -> Path:
    """Where the miniature CLIP lives: ``<cache_root or $CSD_NERF_CACHE or ~/.cache/csd_nerf>/tiny-clip-v1``."""
    return Path(cache_root).expanduser() / _RECIPE if cache_root else default_cache_root() / _RECIPE


def build_tiny_clip(folder: str | Path, seed: int = 0) -> Path:
    """Build the miniature CLIP (model, tokenizer, image processor) and ``save_pretrained`` it into ``folder``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from csd_nerf.byte_tokenizer import byte_level_clip_tokenizer

    # CLIP's BPE files are not available offline: byte-level characters with no merges, same tokenizer class.
    tokenizer = byte_level_clip_tokenizer()
    vocab = tokenizer.get_vocab()
    eos = vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            # pooling reads the first eos token; padding with it (CLIP's convention) keeps that the real end
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    # Seeded without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def ensure_tiny_clip(cache_root: str | Path | None = None) -> Path:
    """The miniature CLIP's folder, built on first use; safe when several processes race to build it."""
    return build_once(tiny_clip_dir(cache_root), "config.json", build_tiny_clip)
