"""Which trained scene ``ns-train csd-edit`` / ``csd-edit-splat`` edits: ``--data`` given on ``ns-train`` or on
the dataparser subcommand, on the source's side and on ours; relative paths from another folder; moved data."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import tyro
import yaml
from nerf_fixtures import (
    CPU,
    QUIET,
    dataparser_source_run,
    run_tool,
    single_run,
    source_run,
    splat_source_run,
    synthetic_scene,
)

from csd_nerf.nerf.source import SourceError, data_path
from csd_nerf.nerf.trainer import resolve_source

EDIT = {"nerfacto": ("csd-edit", "nerfacto"), "splat": ("csd-edit-splat", "splatfacto-cpu")}


def _parse(argv: list[str], monkeypatch) -> object:
    """The config ``ns-train ARGV`` builds, and the source resolved as ``ns-train`` resolves it (in process)."""
    from nerfstudio.scripts.train import AnnotatedBaseConfigUnion

    monkeypatch.setattr(sys, "argv", ["ns-train", *argv])  # flags given on the command line win over the source's
    config = tyro.cli(AnnotatedBaseConfigUnion, args=argv)
    if config.data:  # ns-train's own --data alias
        config.pipeline.datamanager.data = config.data
    config.set_timestamp()
    resolve_source(config)
    return config


def _sources(base: Path, representation: str) -> dict[str, tuple[Path, Path]]:
    """Source run and its data folder, for each way the source was given its data."""
    method = EDIT[representation][1]
    on_ns_train = source_run(base) if representation == "nerfacto" else splat_source_run(base)
    on_dataparser = dataparser_source_run(base, method)
    return {
        "ns-train": (on_ns_train, synthetic_scene(base)),
        "dataparser": (on_dataparser, on_dataparser.parents[3] / "scene"),
    }


def test_a_source_trained_with_the_dataparsers_data_records_it_there_only(base):
    """The premise: nerfstudio saves ``datamanager.data: null`` for ``nerfstudio-data --data scene``."""
    run = dataparser_source_run(base, "nerfacto")
    config = yaml.load((run / "config.yml").read_text(), Loader=yaml.Loader)
    assert config.pipeline.datamanager.data is None and config.pipeline.datamanager.dataparser.data == Path("scene")


@pytest.mark.parametrize("representation", ["nerfacto", "splat"])
@pytest.mark.parametrize("source_form", ["ns-train", "dataparser"])
@pytest.mark.parametrize("edit_form", ["ns-train", "dataparser"])
def test_data_finds_the_source_whichever_side_names_it(base, monkeypatch, representation, source_form, edit_form):
    method = EDIT[representation][0]
    run, scene = _sources(base, representation)[source_form]
    outputs = run.parents[2]
    head = [method, "--output-dir", str(outputs), "--pipeline.prompt", "x", "--machine.device-type", "cpu"]
    data = ["--data", str(scene)]
    config = _parse(head + data if edit_form == "ns-train" else head + ["nerfstudio-data", *data], monkeypatch)
    assert config.source_checkpoint.parent.parent == run
    assert data_path(config.pipeline.datamanager).resolve() == scene.resolve()


def test_load_dir_from_another_folder_finds_the_sources_relative_data(base, tmp_path, monkeypatch):
    """The source recorded ``data: scene`` relative to the folder it was trained in; the edit runs elsewhere."""
    run = dataparser_source_run(base, "nerfacto")
    monkeypatch.chdir(tmp_path)
    load_dir = Path(os.path.relpath(run / "nerfstudio_models", tmp_path))
    config = _parse(["csd-edit", "--load-dir", str(load_dir), "--pipeline.prompt", "x"] + CPU, monkeypatch)
    assert data_path(config.pipeline.datamanager) == run.parents[3] / "scene"


def test_a_source_whose_data_moved_is_one_line_naming_data(base, tmp_path, monkeypatch):
    run = dataparser_source_run(base, "nerfacto")
    moved = tmp_path / "elsewhere" / run.relative_to(run.parents[3])  # the run without its data beside it
    shutil.copytree(run, moved)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match=r"trained on scene, which is not found .*: pass --data"):
        _parse(
            ["csd-edit", "--load-dir", str(moved / "nerfstudio_models"), "--pipeline.prompt", "x"] + CPU, monkeypatch
        )


def test_dataparser_data_end_to_end_from_another_folder(base, tmp_path):
    """``ns-train csd-edit nerfstudio-data --data ../scene`` as a user types it, one step, from another folder."""
    run = dataparser_source_run(base, "nerfacto")
    work = tmp_path / "work"
    work.mkdir()
    scene = Path(os.path.relpath(run.parents[3] / "scene", work))
    outputs = Path(os.path.relpath(run.parents[2], work))
    args = ["ns-train", "csd-edit", "--output-dir", str(outputs), "--experiment-name", "edit-e2e"]
    args += ["--pipeline.prompt", "Turn the ball blue", "--pipeline.ip2p-model", "tiny", "--max-num-iterations", "1"]
    args += ["--pipeline.render-resolution", "16", "--pipeline.num-particles", "1"] + CPU + QUIET
    proc = run_tool([*args, "nerfstudio-data", "--data", str(scene)], base, cwd=work)
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        edited = single_run(run.parents[2], "csd-edit")
        config = yaml.load((edited / "config.yml").read_text(), Loader=yaml.Loader)
        assert config.source_checkpoint.resolve().parent.parent == run.resolve()
        assert list((edited / "nerfstudio_models").glob("step-*.ckpt"))
    finally:
        shutil.rmtree(run.parents[2] / "edit-e2e", ignore_errors=True)


def test_a_source_run_that_stopped_before_its_first_checkpoint_gets_the_offline_hint(base, tmp_path):
    """What ``ns-train nerfacto`` leaves offline (it stops fetching AlexNet): a run folder with config.yml only."""
    from csd_nerf.nerf.source import find_source

    run = dataparser_source_run(base, "nerfacto")
    crashed = tmp_path / "outputs" / "unnamed" / "nerfacto" / "2026-01-01_000000"
    crashed.mkdir(parents=True)
    config = yaml.load((run / "config.yml").read_text(), Loader=yaml.Loader)
    config.pipeline.datamanager.dataparser.data = run.parents[3] / "scene"
    (crashed / "config.yml").write_text(yaml.dump(config))
    with pytest.raises(SourceError) as error:
        find_source(None, None, None, data=run.parents[3] / "scene", output_dir=tmp_path / "outputs")
    message = str(error.value)
    assert "1 nerfacto run(s)" in message and "stopped before their first checkpoint" in message
    assert "Training the source scene offline" in message and "train it first" in message
