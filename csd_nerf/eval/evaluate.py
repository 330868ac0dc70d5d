"""Evaluate an edited sequence against its source: CLIP metrics, PSNR and LPIPS, as one result object."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from csd_nerf.errors import SettingError, check_text
from csd_nerf.eval import metrics as M
from csd_nerf.eval.clip import ClipEmbedder
from csd_nerf.eval.errors import EvalInputError
from csd_nerf.eval.frames import check_pair
from csd_nerf.eval.lpips import LpipsScorer, frames_to_unit_tensor

__all__ = ["METRIC_INFO", "MetricResult", "EvalResult", "check_captions", "evaluate"]

# key -> (pairing, description). "frame": source_k vs edited_k, F values; "consecutive": k vs k + 1, F - 1 values.
METRIC_INFO: dict[str, tuple[str, str]] = {
    "clip_directional_similarity": (
        "frame",
        "cos(E_I(edited_k) - E_I(source_k), E_T(target caption) - E_T(source caption)); higher = edit follows the text",
    ),
    "clip_image_similarity": ("frame", "cos(E_I(source_k), E_I(edited_k)); higher = more of the source is kept"),
    "clip_direction_consistency": (
        "consecutive",
        "cos(E_I(edited_k) - E_I(source_k), E_I(edited_k+1) - E_I(source_k+1)) (Instruct-NeRF2NeRF); higher = steadier",
    ),
    "clip_image_consistency": ("consecutive", "cos(E_I(edited_k), E_I(edited_k+1)) (CSD paper); higher = steadier"),
    "psnr": ("frame", "PSNR in dB of edited_k against source_k; identical frames are infinite (null)"),
    "lpips": ("frame", "LPIPS (AlexNet) of edited_k against source_k; lower = closer to the source"),
    "lpips_consecutive": (
        "consecutive",
        "LPIPS (AlexNet) of edited_k against edited_k+1 (CSD paper); lower = steadier",
    ),
}


@dataclass
class MetricResult:
    """One metric: its per-frame (or per consecutive pair) values and their summary, or why it is unavailable."""

    key: str
    pairing: str
    description: str
    values: torch.Tensor | None
    summary: M.Summary | None
    reason: str | None = None

    @property
    def available(self) -> bool:
        """Whether the metric was computed."""
        return self.values is not None

    @property
    def mean(self) -> float | None:
        """Mean over the defined values, ``None`` when unavailable or all undefined."""
        return None if self.summary is None else self.summary.mean

    def per_frame(self) -> list[float | None] | None:
        """Values as JSON-ready floats; NaN and infinities (undefined, identical) become ``None``."""
        if self.values is None:
            return None
        return [float(v) if math.isfinite(v) else None for v in self.values.tolist()]


@dataclass
class EvalResult:
    """Everything one evaluation produced; :mod:`csd_nerf.eval.report` turns it into JSON and a plot."""

    metrics: dict[str, MetricResult]
    num_frames: int
    height: int
    width: int
    source_caption: str
    target_caption: str
    model: dict[str, object]
    warnings: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def meaningless(self) -> bool:
        """True when the scores come from a random model and must not be read as results."""
        return bool(self.model.get("meaningless", False))

    def means(self) -> dict[str, float | None]:
        """Mean of every metric (``None`` for unavailable ones)."""
        return {k: m.mean for k, m in self.metrics.items()}


def check_captions(source_caption: str, target_caption: str) -> None:
    """Raise ``EvalInputError`` for an empty caption, one that is not UTF-8 text, or two identical ones."""
    try:
        check_text(source_caption, "--source-caption")
        check_text(target_caption, "--target-caption")
    except SettingError as exc:
        raise EvalInputError(str(exc)) from None
    if not source_caption or not source_caption.strip():
        raise EvalInputError(
            "the source caption is empty: pass --source-caption describing the source, e.g. 'a photo of a bear'"
        )
    if not target_caption or not target_caption.strip():
        raise EvalInputError(
            "the target caption is empty: pass --target-caption describing the edit, e.g. 'a photo of a grizzly bear'"
        )
    if source_caption.strip() == target_caption.strip():
        raise EvalInputError(
            "the source and target captions are identical, so there is no text direction to compare against"
        )


def _result(key: str, values: torch.Tensor | None, reason: str | None = None) -> MetricResult:
    pairing, description = METRIC_INFO[key]
    summary = None if values is None else M.summarize(values)
    return MetricResult(key, pairing, description, values, summary, reason)


def evaluate(
    source: np.ndarray,
    edited: np.ndarray,
    source_caption: str,
    target_caption: str,
    clip: ClipEmbedder,
    lpips: LpipsScorer | None = None,
    lpips_reason: str | None = "LPIPS not requested",
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Compute every metric on two ``[F, H, W, 3]`` uint8 sequences of the same shape.

    Args:
        source, edited: the original and the edited frames, in order.
        source_caption, target_caption: captions of the source and of the intended edit (for the text direction).
        clip: a loaded CLIP embedder.
        lpips: an LPIPS scorer, or ``None`` to report LPIPS unavailable with ``lpips_reason``.
        progress: called with the number of frames embedded after each CLIP batch.
    """
    check_captions(source_caption, target_caption)
    check_pair(source, edited)
    timings: dict[str, float] = {}
    warnings: list[str] = [clip.warning] if clip.warning else []
    n = source.shape[0]

    t0 = time.perf_counter()
    src_emb = clip.embed_images(source, progress)
    edit_emb = clip.embed_images(edited, progress)
    text_emb = clip.embed_texts([source_caption, target_caption])
    timings["clip_embedding"] = time.perf_counter() - t0

    out: dict[str, MetricResult] = {}
    out["clip_directional_similarity"] = _result(
        "clip_directional_similarity", M.clip_directional_similarity(src_emb, edit_emb, text_emb[0], text_emb[1])
    )
    out["clip_image_similarity"] = _result("clip_image_similarity", M.clip_image_similarity(src_emb, edit_emb))
    out["clip_direction_consistency"] = _result(
        "clip_direction_consistency", M.clip_direction_consistency(src_emb, edit_emb)
    )
    out["clip_image_consistency"] = _result("clip_image_consistency", M.clip_image_consistency(edit_emb))

    src_px, edit_px = frames_to_unit_tensor(source), frames_to_unit_tensor(edited)
    out["psnr"] = _result("psnr", M.psnr(src_px, edit_px))

    t0 = time.perf_counter()
    lpips_vals: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
    if lpips is not None:
        try:
            lpips_vals = (lpips(edit_px, src_px), lpips(edit_px[:-1], edit_px[1:]))
        except Exception as err:  # e.g. frames too small for AlexNet's pooling
            lpips_reason = f"LPIPS failed on these frames ({type(err).__name__}: {str(err).strip().splitlines()[0]})"
    timings["lpips"] = time.perf_counter() - t0
    out["lpips"] = _result("lpips", lpips_vals[0], None if lpips_vals[0] is not None else lpips_reason)
    out["lpips_consecutive"] = _result(
        "lpips_consecutive", lpips_vals[1], None if lpips_vals[1] is not None else lpips_reason
    )

    text_dir = M.unit(text_emb[1:2]) - M.unit(text_emb[0:1])
    if float(text_dir.norm()) < M.ZERO_NORM_TOL:
        warnings.append("the two captions embed to the same CLIP text vector: directional similarity is undefined")
    unchanged = int(((M.unit(edit_emb) - M.unit(src_emb)).norm(dim=-1) < M.ZERO_NORM_TOL).sum())
    if unchanged:
        warnings.append(
            f"{unchanged} of {n} frame(s) have no CLIP change from the source: their directional scores are undefined (null)"
        )
    if n < 2:
        warnings.append("one frame only: the consecutive-frame consistency metrics are empty")

    return EvalResult(
        metrics=out,
        num_frames=n,
        height=int(source.shape[1]),
        width=int(source.shape[2]),
        source_caption=source_caption,
        target_caption=target_caption,
        model={"name": clip.name, "backend": clip.backend, "device": str(clip.device), "meaningless": clip.meaningless},
        warnings=warnings,
        timings_s=timings,
    )
