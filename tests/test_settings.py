"""Each setting is defined once: the 3D pipelines and the 2D command take the CSD-Edit step's from CSDEditConfig."""

from __future__ import annotations

import dataclasses

import pytest

from csd_nerf.editor import CSDEditConfig
from csd_nerf.guidance import DEFAULT_MODEL, GuidanceConfig

EDIT_FIELDS = {f.name: f for f in dataclasses.fields(CSDEditConfig)}


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@pytest.mark.parametrize(
    "module, name", [("pipeline", "CSDPipelineConfig"), ("splat_pipeline", "CSDSplatPipelineConfig")]
)
def test_pipeline_configs_mirror_every_editor_field_and_default(module, name):
    import importlib

    config_class = getattr(importlib.import_module(f"csd_nerf.nerf.{module}"), name)
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    for key, field in EDIT_FIELDS.items():
        assert key in fields, key
        assert _default(fields[key]) == _default(field), key
        assert fields[key].type == field.type, key
    config = config_class(prompt="make it snowy", guidance_scale=9.0, coupling=False)
    assert CSDEditConfig.from_settings(config) == CSDEditConfig(
        prompt="make it snowy", guidance_scale=9.0, coupling=False
    )
    assert _default(fields["ip2p_model"]) == DEFAULT_MODEL == GuidanceConfig().model


def test_2d_command_defaults_come_from_the_configs():
    from csd_nerf.media.cli import APP_DEFAULTS, build_parser
    from csd_nerf.media.optimise import OptimConfig

    parser = build_parser()
    for command in ("panorama", "video"):
        args = parser.parse_args([command, "--input", "x", "--output", "y", "--prompt", "p"])
        for key, field in EDIT_FIELDS.items():
            if key in ("prompt", "coupling"):
                continue
            expected = APP_DEFAULTS[command].get(key, _default(field))
            assert getattr(args, key) == expected, (command, key)
        assert args.no_svgd is (not _default(EDIT_FIELDS["coupling"]))
        assert args.lr_decay == OptimConfig().lr_decay and args.lr_decay_every == OptimConfig().lr_decay_every
        assert args.model == DEFAULT_MODEL


def test_splat_optimisers_are_splatfactos_own():
    """Written out in our method config (nerfstudio's module cannot be imported there); held to nerfstudio's."""
    from nerfstudio.configs.method_configs import method_configs

    from csd_nerf.method_configs.csd_edit import splatfacto_optimizers

    ours, theirs = splatfacto_optimizers(30000), method_configs["splatfacto"].optimizers
    assert ours.keys() == theirs.keys()
    for group in theirs:
        assert ours[group]["optimizer"] == theirs[group]["optimizer"], group
        assert ours[group]["scheduler"] == theirs[group]["scheduler"], group
    splat_model = method_configs["splatfacto"].pipeline.model
    from csd_nerf.method_configs.csd_edit import splatfacto_cpu_method

    cpu = splatfacto_cpu_method.config
    assert isinstance(cpu.pipeline.model, type(splat_model))
    assert cpu.pipeline.datamanager.dataparser.load_3D_points


def test_every_method_registers_whatever_is_imported_first():
    """Imported before nerfstudio's method registry (which imports it back), no method may come out broken."""
    import subprocess
    import sys

    code = (
        "import csd_nerf.method_configs.csd_edit as m\n"
        "from nerfstudio.configs.method_configs import all_descriptions\n"
        "names = ['csd-edit', 'csd-edit-small', 'csd-edit-splat', 'splatfacto-cpu']\n"
        "print([n for n in names if all_descriptions[n].startswith('[unavailable')])\n"
        "print([s.description[:12] for s in (m.csd_edit_method, m.csd_edit_splat_method, m.splatfacto_cpu_method)])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    broken, descriptions = proc.stdout.strip().splitlines()[-2:]
    assert broken == "[]" and "unavailable" not in descriptions
