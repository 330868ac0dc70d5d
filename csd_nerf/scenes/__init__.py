"""Particle scenes: what the CSD-Edit step optimises (a set of latents, a panorama canvas, a NeRF)."""
