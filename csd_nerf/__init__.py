"""csd-nerf: Collaborative Score Distillation (CSD-Edit) for nerfstudio scenes, panoramas and videos."""

__version__ = "0.1.0"
