"""Evaluation of edits: CLIP directional similarity and consistency, PSNR and LPIPS (``csd-eval``).

Modules: ``metrics`` (pure math on embeddings), ``frames`` (pairing sequences; reading is ``csd_nerf.media.io``), ``clip`` and ``tiny_clip``
(models), ``lpips``, ``evaluate`` (all metrics on two sequences), ``report`` (JSON and plot), ``cli``.
"""

from csd_nerf.eval.errors import ClipLoadError, EvalError, EvalInputError

__all__ = ["ClipLoadError", "EvalError", "EvalInputError"]
