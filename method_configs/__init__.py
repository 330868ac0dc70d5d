"""nerfstudio method specifications of csd-nerf, discovered through the ``nerfstudio.method_configs`` entry point."""
