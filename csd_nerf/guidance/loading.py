"""Loading InstructPix2Pix's parts through diffusers from a hub id, a local folder, or ``tiny``."""

from __future__ import annotations

import shlex
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from csd_nerf.errors import SettingError, UserError, first_line
from csd_nerf.guidance.components import IP2PComponents
from csd_nerf.guidance.tiny import TINY_MODEL_NAME, tiny_ip2p_path

__all__ = ["DEFAULT_MODEL", "GuidanceLoadError", "load_ip2p_components", "parse_dtype", "resolve_dtype"]

DEFAULT_MODEL = "timbrooks/instruct-pix2pix"
"""The InstructPix2Pix every editing plugin uses; the one place this id is written."""
_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class GuidanceLoadError(UserError):
    """The diffusion prior could not be loaded; the message says how to fix it."""


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float16"`` / ``torch.float16`` -> ``torch.float16``, with a one-line error for anything else."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise SettingError(f"unknown dtype {dtype!r}: use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """Like :func:`parse_dtype`, with ``"auto"`` meaning float16 on CUDA and float32 elsewhere."""
    if dtype == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    return parse_dtype(dtype)


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or Path(model).expanduser().exists() or model.count("/") > 1


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hub answers at all; offline the hub client would otherwise retry for half a minute."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


@contextmanager
def _quiet_hub() -> Iterator[None]:
    """Silence the hub client while loading: its retries and the deprecation warnings diffusers triggers in it
    would otherwise bury our one-line message."""
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="huggingface_hub")
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        diffusers_logging.set_verbosity(verbosity)


def _fix_hint(model: str) -> str:
    command = shlex.join(["hf", "download", model, "--local-dir", "ip2p"])
    return (
        f'download it once on a connected machine with "{command}" and pass that folder, '
        f"or use model 'tiny' for an offline smoke run"
    )


def _locate(model: str) -> tuple[str, bool]:
    """Where ``model`` loads from and whether that is a local folder; a one-line error for a bad name or folder."""
    if not model or not model.strip():
        raise GuidanceLoadError(
            f"no InstructPix2Pix model given: pass a hub id such as {DEFAULT_MODEL}, a folder, or 'tiny'"
        )
    if model == TINY_MODEL_NAME:
        return str(tiny_ip2p_path()), True
    if _looks_like_path(model):
        folder = Path(model).expanduser()
        if not folder.is_dir():
            raise GuidanceLoadError(
                f"InstructPix2Pix folder {folder} does not exist: pass an existing diffusers folder"
            )
        missing = [name for name in _SUBFOLDERS if not (folder / name).is_dir()]
        if missing:
            raise GuidanceLoadError(
                f"{folder} is not a diffusers InstructPix2Pix folder (missing {', '.join(missing)}): "
                f"pass the folder that holds model_index.json"
            )
        return str(folder), True
    return model, False


def check_ip2p_model(model: str) -> None:
    """Fail early, in one line, when ``model`` certainly cannot be loaded (a missing folder, a hub id that is
    neither cached nor reachable); cheap: nothing is loaded. The load itself can still fail later."""
    location, local = _locate(model)
    if local:
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(location, "config.json", subfolder="unet"), str)
    except Exception:  # a malformed id: the load will say so
        return
    if not cached and not _hub_reachable():
        raise GuidanceLoadError(
            f"InstructPix2Pix {model!r} is not in the local Hugging Face cache and the Hub cannot be reached "
            f"(offline?): {_fix_hint(model)}"
        )


def load_ip2p_components(model: str, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32"):
    """Load UNet, VAE, text encoder, tokenizer and noise schedule of an IP2P model.

    Args:
        model: a hub id (default ``timbrooks/instruct-pix2pix``), a local diffusers folder, or ``tiny``.
        device: where the networks go.
        dtype: ``float32`` or ``float16`` (``bfloat16`` also accepted).

    Raises:
        GuidanceLoadError: with a one-line message saying how to fix it.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    torch_dtype = parse_dtype(dtype)
    location, local = _locate(model)

    def load_all(local_files_only: bool) -> IP2PComponents:
        kwargs = {"local_files_only": local_files_only}
        return IP2PComponents(
            unet=UNet2DConditionModel.from_pretrained(location, subfolder="unet", torch_dtype=torch_dtype, **kwargs),
            vae=AutoencoderKL.from_pretrained(location, subfolder="vae", torch_dtype=torch_dtype, **kwargs),
            text_encoder=CLIPTextModel.from_pretrained(location, subfolder="text_encoder", dtype=torch_dtype, **kwargs),
            tokenizer=CLIPTokenizer.from_pretrained(location, subfolder="tokenizer", **kwargs),
            scheduler=DDIMScheduler.from_pretrained(location, subfolder="scheduler", **kwargs),
            source=model,
        )

    try:
        with _quiet_hub():
            try:
                parts = load_all(local_files_only=True)
            except Exception:
                if local:
                    raise
                if not _hub_reachable():
                    raise GuidanceLoadError(
                        f"InstructPix2Pix {model!r} is not in the local Hugging Face cache and the Hub cannot be "
                        f"reached (offline?): {_fix_hint(model)}"
                    ) from None
                parts = load_all(local_files_only=False)
    except GuidanceLoadError:
        raise
    except Exception as exc:  # diffusers/transformers/hub raise many types; all mean "not loadable"
        where = "the local folder" if local else "the Hugging Face Hub or its local cache"
        raise GuidanceLoadError(
            f"cannot load InstructPix2Pix {model!r} from {where} ({first_line(exc, 160)}): {_fix_hint(model)}"
        ) from exc

    for net in (parts.unet, parts.vae, parts.text_encoder):
        net.to(device)
        net.eval()
        net.requires_grad_(False)
    return parts
