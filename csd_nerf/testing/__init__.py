"""Helpers for the demo, the tests and the benchmarks, not part of the plugin: a ray-traced synthetic scene,
running stock ``ns-*`` commands offline, and the CPU-sized model presets they share."""
