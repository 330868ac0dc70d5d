"""Priors for CSD-Edit: InstructPix2Pix (loading, prompt and source caches, batched guided residuals), its
random-weight presets, and the known-answer test prior."""

from csd_nerf.guidance.ip2p import GuidanceConfig, IP2PGuidance
from csd_nerf.guidance.loading import DEFAULT_MODEL, GuidanceLoadError, load_ip2p_components
from csd_nerf.guidance.source_cache import SourceCache
from csd_nerf.guidance.stats import GuidanceOutput, GuidanceStats
from csd_nerf.guidance.tiny import TINY_MODEL_NAME, TINY_NOTICE

__all__ = [
    "DEFAULT_MODEL",
    "TINY_MODEL_NAME",
    "TINY_NOTICE",
    "GuidanceConfig",
    "GuidanceLoadError",
    "GuidanceOutput",
    "GuidanceStats",
    "IP2PGuidance",
    "SourceCache",
    "load_ip2p_components",
]
