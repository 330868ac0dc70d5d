"""``csd-edit-2d`` end to end with the miniature model: outputs, reproducibility, errors, and nothing half-written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from csd_nerf.media import io as media
from csd_nerf.media.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


FAST = ["--model", "tiny", "--steps", "3", "--quiet"]
PANORAMA = ["--window", "8", "--stride", "4"]


@pytest.fixture
def panorama(tmp_path: Path) -> Path:
    """70 x 150 px: sides not multiples of 8, two rows and four columns of 64 px windows."""
    x = np.linspace(0, 255, 150)[None, :]
    y = np.linspace(0, 255, 70)[:, None]
    image = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    path = tmp_path / "pano.png"
    media.write_image(path, image)
    return path


def _video_frames(count: int = 8) -> np.ndarray:
    x = np.linspace(0, 200, 64)[None, None, :]
    t = np.arange(count)[:, None, None] * 6
    return np.stack([np.broadcast_to(x + t, (count, 48, 64))] * 3, axis=-1).astype(np.uint8)


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return media.write_video(tmp_path / "clip.mp4", media.Video(_video_frames(), Fraction(12), "file"))


def _panorama_run(panorama: Path, output: Path, *extra: str) -> int:
    return main(
        ["panorama", "--input", str(panorama), "--output", str(output), "--prompt", "paint it"]
        + FAST
        + PANORAMA
        + list(extra)
    )


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def test_panorama_writes_image_comparison_and_run_record(panorama, tmp_path, capsys):
    out = tmp_path / "out"
    assert _panorama_run(panorama, out, "--save-every", "2") == 0

    edited = media.read_image(out / "edited.png")
    assert edited.shape == (70, 150, 3)  # back at the input's own size
    assert media.read_image(out / "comparison.png").shape == (70 * 2 + 8, 150, 3)  # wide: source above edit
    assert (out / "steps" / "step_00002.png").is_file()

    record = json.loads((out / "run.json").read_text())
    assert record["notice"] and "random weights" in record["notice"]
    assert "random weights" in capsys.readouterr().err
    assert record["seed"] == 0 and "--save-every" in record["argv"]
    assert record["config"]["edit"]["guidance_scale"] == 7.5
    assert record["config"]["edit"]["image_guidance_scale"] == 1.5
    assert record["config"]["optim"] == {"steps": 3, "lr": 2.0, "lr_decay": 0.9, "lr_decay_every": 20}
    assert record["input"]["working_size"] == [152, 72] and record["input"]["windows"] == 8
    assert record["versions"]["torch"] and record["versions"]["diffusers"]
    assert len(record["timings"]["edit"]["timesteps"]) == 3
    assert all(20 <= t <= 500 for t in record["timings"]["edit"]["timesteps"])
    assert _leftovers(tmp_path) == []


def test_video_keeps_size_frame_count_and_fps(video, tmp_path):
    out = tmp_path / "out"
    argv = ["video", "--input", str(video), "--output", str(out), "--prompt", "paint it", "--size", "32"]
    assert main(argv + FAST) == 0
    edited = media.read_video(out / "edited.mp4")
    assert edited.frames.shape == (8, 48, 64, 3)
    assert edited.fps == 12
    record = json.loads((out / "run.json").read_text())
    assert record["input"]["frames"] == 8 and record["config"]["edit"]["num_particles"] == 24
    assert record["config"]["optim"]["lr"] == 0.5 and record["config"]["optim"]["steps"] == 3
    assert (out / "comparison.png").is_file()


def test_gif_and_frame_folder_come_back_in_their_own_kind(tmp_path):
    frames = _video_frames(5)
    gif = media.write_video(tmp_path / "clip.gif", media.Video(frames, Fraction(10), "gif"))
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        media.write_image(folder / f"{i:03d}.jpg", frame)
    for source, name in ((gif, "edited.gif"), (folder, "edited")):
        out = tmp_path / f"out-{name}"
        argv = ["video", "--input", str(source), "--output", str(out), "--prompt", "paint it", "--size", "32"]
        assert main(argv + FAST[:-3] + ["--steps", "1", "--quiet"]) == 0
        result = media.read_video(out / name)
        assert result.frames.shape == (5, 48, 64, 3)
    assert media.read_video(tmp_path / "out-edited.gif" / "edited.gif").fps == 10
    assert sorted(p.name for p in (tmp_path / "out-edited" / "edited").iterdir())[0] == "000.png"


def test_same_seed_same_result_other_seed_other_result(panorama, tmp_path):
    results = {}
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        assert _panorama_run(panorama, tmp_path / name, "--seed", seed, "--lr", "50") == 0
        results[name] = media.read_image(tmp_path / name / "edited.png")
    assert np.array_equal(results["a"], results["b"])
    assert not np.array_equal(results["a"], results["c"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompt", "  "], "prompt is empty"),
        (["--guidance-scale", "-1"], "guidance_scale = -1.0 is out of range"),
        (["--image-guidance-scale", "nan"], "image_guidance_scale = nan is out of range"),
        (["--t-min", "600"], "timestep range"),
        (["--steps", "0"], "steps = 0"),
        (["--window", "0"], "use at least 1 latent pixel"),
        (["--model", "/no/such/model"], "does not exist"),
    ],
)
def test_bad_settings_are_one_line_errors_and_write_nothing(panorama, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert _panorama_run(panorama, out, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("csd-edit-2d: error: ") and message in err and "\n" not in err and "Traceback" not in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_missing_and_unreadable_inputs_are_one_line_errors(tmp_path, capsys):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG not really")
    for source, message in ((tmp_path / "missing.png", "does not exist"), (garbage, "not a readable image")):
        argv = ["panorama", "--input", str(source), "--output", str(tmp_path / "out"), "--prompt", "paint it"]
        assert main(argv + FAST) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("csd-edit-2d: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_existing_output_is_refused_unless_overwrite_and_ours(panorama, tmp_path, capsys):
    out = tmp_path / "out"
    assert _panorama_run(panorama, out) == 0
    assert _panorama_run(panorama, out) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err
    (out / "note.txt").write_text("an earlier result of ours, with a note in it")
    assert _panorama_run(panorama, out, "--overwrite") == 0  # it holds our run.json: replaceable
    assert (out / "edited.png").is_file() and not (out / "note.txt").exists()
    assert _leftovers(tmp_path) == []


def test_overwrite_never_deletes_a_folder_of_the_users(panorama, tmp_path, capsys):
    """The user's own folder survives --overwrite untouched; an empty folder may be used."""
    mine = tmp_path / "thesis"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.txt").write_text("four years of work")
    (mine / "sub" / "data.csv").write_text("1,2,3")
    assert _panorama_run(panorama, mine, "--overwrite") == 2
    err = capsys.readouterr().err.strip()
    assert "did not write" in err and "\n" not in err
    assert (mine / "thesis.txt").read_text() == "four years of work" and (mine / "sub" / "data.csv").is_file()
    assert sorted(p.name for p in mine.iterdir()) == ["sub", "thesis.txt"] and _leftovers(tmp_path) == []

    empty = tmp_path / "empty"
    empty.mkdir()
    assert _panorama_run(panorama, empty, "--overwrite") == 0 and (empty / "run.json").is_file()


def test_output_folders_get_the_users_umask(panorama, tmp_path):
    import os

    previous = os.umask(0o022)
    try:
        assert _panorama_run(panorama, tmp_path / "out") == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


def test_a_16_bit_png_is_read_as_the_picture_it_is(tmp_path):
    import cv2

    ramp = np.linspace(0, 65535, 40 * 64).reshape(40, 64).astype(np.uint16)
    grey, rgb = tmp_path / "grey16.png", tmp_path / "rgb16.png"
    cv2.imwrite(str(grey), ramp)
    cv2.imwrite(str(rgb), np.stack([ramp // 3, ramp // 2, ramp], axis=-1))  # OpenCV writes BGR
    expected = np.round(ramp / 257.0).astype(np.uint8)
    got = media.read_image(grey)
    assert got.dtype == np.uint8 and np.abs(got[..., 0].astype(int) - expected).max() <= 1
    assert 120 < got.mean() < 135  # not the near-white image 16-bit values clipped to 255 would give
    colour = media.read_image(rgb)
    assert np.abs(colour[..., 0].astype(int) - expected).max() <= 1  # red is the last OpenCV channel


def test_an_internal_bug_is_not_disguised_as_a_user_error(panorama, tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr("csd_nerf.media.cli.run_edit", bug)
    with pytest.raises(ValueError, match="internal inconsistency"):
        _panorama_run(panorama, tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_unwritable_output_and_output_over_input_are_refused(panorama, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert _panorama_run(panorama, blocker / "out") == 2
    assert "cannot write the output folder" in capsys.readouterr().err

    frames = tmp_path / "frames"
    frames.mkdir()
    media.write_image(frames / "0.png", _video_frames(1)[0])
    argv = ["video", "--input", str(frames), "--output", str(frames), "--prompt", "paint it", "--overwrite"]
    assert main(argv + FAST) == 2
    assert "would replace the input" in capsys.readouterr().err
    assert (frames / "0.png").is_file()


def test_an_interrupted_run_leaves_nothing(panorama, tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("csd_nerf.media.cli.run_edit", interrupt)
    assert _panorama_run(panorama, tmp_path / "out") == 130
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_running_out_of_memory_is_a_one_line_error_with_a_fix(panorama, tmp_path, monkeypatch, capsys):
    def exhaust(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr("csd_nerf.media.cli.run_edit", exhaust)
    assert _panorama_run(panorama, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("csd-edit-2d: error: out of memory") and "--num-particles" in err
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_ablation_switches_reach_the_editor(panorama, tmp_path):
    out = tmp_path / "out"
    assert _panorama_run(panorama, out, "--no-svgd", "--baseline", "noise", "--steps", "1") == 0
    edit = json.loads((out / "run.json").read_text())["config"]["edit"]
    assert edit["coupling"] is False and edit["baseline"] == "noise"
    # the SDS baseline needs 3 UNet evaluations per particle instead of 5
    assert json.loads((out / "run.json").read_text())["timings"]["edit"]["unet_samples"] == 3 * 4


def test_svgd_frames_agree_more_than_no_svgd_through_the_cli(tmp_path):
    """A static video (eight identical frames): the spread of the edited frames is the update's own spread."""
    frame = _video_frames(1)[0]
    folder = tmp_path / "static"
    folder.mkdir()
    for i in range(8):
        media.write_image(folder / f"{i}.png", frame)
    spread = {}
    for flag in ([], ["--no-svgd"]):
        out = tmp_path / f"out{len(flag)}"
        argv = ["video", "--input", str(folder), "--output", str(out), "--prompt", "paint it", "--size", "64"]
        assert main(argv + ["--model", "tiny", "--steps", "6", "--lr", "5", "--seed", "3", "--quiet"] + flag) == 0
        frames = media.read_video(out / "edited").frames.astype(float)
        spread[bool(flag)] = frames.std(axis=0).mean()
    assert spread[False] < spread[True], spread  # False: with SVGD


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("csd-edit-2d")
    command = [str(script)] if script.exists() else [shutil.which("csd-edit-2d") or "csd-edit-2d"]
    result = subprocess.run(command + ["panorama", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for option in ("--window", "--stride", "--no-svgd", "--baseline", "--save-every", "--overwrite", "--lr"):
        assert option in result.stdout
