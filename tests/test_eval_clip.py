"""The CLIP loading glue: the miniature offline CLIP, its tokenizer, and the one-line load errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from csd_nerf.eval.clip import load_clip, resolve_device
from csd_nerf.eval.errors import ClipLoadError, EvalInputError
from csd_nerf.eval.tiny_clip import TINY_CLIP_WARNING, ensure_tiny_clip, tiny_clip_dir


@pytest.fixture(scope="module")
def tiny():
    return load_clip("tiny", "cpu", batch_size=3)


def test_tiny_clip_is_saved_and_loaded_back_through_from_pretrained(tiny):
    folder = ensure_tiny_clip()
    assert folder == tiny_clip_dir()
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= names
    assert tiny.meaningless and tiny.warning == TINY_CLIP_WARNING and "meaningless" in tiny.warning
    assert ensure_tiny_clip() == folder  # second call reuses the cache


def test_tiny_clip_embeds_frames_and_captions(tiny):
    gen = np.random.default_rng(0)
    frames = gen.integers(0, 256, size=(5, 40, 56, 3), dtype=np.uint8)
    seen: list[int] = []
    emb = tiny.embed_images(frames, progress=seen.append)
    assert emb.shape == (5, 16) and emb.dtype == torch.float32
    assert seen == [3, 2]  # batch_size 3
    again = tiny.embed_images(frames[[4, 0]])
    torch.testing.assert_close(again, emb[[4, 0]], atol=1e-5, rtol=1e-5)  # batching does not change an embedding
    assert not torch.allclose(emb[0], emb[1])
    texts = tiny.embed_texts(["a photo of a bear", "a photo of a grizzly bear with a very long caption"])
    alone = tiny.embed_texts(["a photo of a bear"])
    assert texts.shape == (2, 16)
    torch.testing.assert_close(alone[0], texts[0], atol=1e-5, rtol=1e-5)  # padding must not leak into pooling
    assert not torch.allclose(texts[0], texts[1])


def test_byte_level_tokenizer_covers_any_text_without_unknowns():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(ensure_tiny_clip())
    ids = tok("Grüße, 熊! <b>")["input_ids"]
    bos, eos = tok.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
    assert ids[0] == bos and ids[-1] == eos
    assert eos not in ids[1:-1]  # the unknown token is <|endoftext|>: none inside means every byte was covered
    assert len(ids) > 10


def test_missing_folder_gives_one_line_with_a_fix(tmp_path):
    with pytest.raises(ClipLoadError) as err:
        load_clip(str(tmp_path / "no_such_model"), "cpu")
    msg = str(err.value)
    assert "\n" not in msg and "folder not found" in msg and "Fix:" in msg and "tiny" in msg


def test_missing_folder_with_a_trailing_slash_is_a_folder_not_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("models/", "a/b/c"):
        with pytest.raises(ClipLoadError, match="folder not found"):
            load_clip(name, "cpu")


def test_unreachable_hub_id_gives_one_line_with_a_fix():
    # conftest sets HF_HUB_OFFLINE=1, so this fails at once instead of retrying against the network
    with pytest.raises(ClipLoadError) as err:
        load_clip("openai/clip-vit-large-patch14", "cpu")
    msg = str(err.value)
    assert "\n" not in msg and "openai/clip-vit-large-patch14" in msg and "Fix:" in msg


def test_folder_without_a_clip_gives_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ClipLoadError) as err:
        load_clip(str(tmp_path), "cpu")
    assert "\n" not in str(err.value) and "local folder" in str(err.value)


def test_open_clip_is_optional(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # makes `import open_clip` raise ImportError
    with pytest.raises(ClipLoadError, match="pip install open_clip_torch"):
        load_clip("open_clip:ViT-bigG-14", "cpu")
    with pytest.raises(ClipLoadError, match="open_clip:ARCH:PRETRAINED"):
        load_clip("open_clip:SomeArch", "cpu")


def test_devices(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(EvalInputError, match="no GPU"):
        resolve_device("cuda")
    with pytest.raises(EvalInputError, match="invalid --device"):
        resolve_device("toaster")
