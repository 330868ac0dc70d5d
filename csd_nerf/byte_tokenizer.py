"""A CLIP tokenizer built from an in-memory byte-level vocabulary, for miniature offline models.

CLIP's BPE vocabulary files are not on disk offline; 256 byte characters (alone and with ``</w>``) plus the
two special tokens, with no merges, tokenize any text with the real ``CLIPTokenizer`` code path.
"""

from __future__ import annotations

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

CLIP_MAX_LENGTH = 77


def byte_level_clip_tokenizer(model_max_length: int = CLIP_MAX_LENGTH) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` over the 256 byte-level characters; its vocabulary has 514 entries."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)
