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


FAST = ["--ip2p-model", "tiny", "--steps", "3", "--quiet"]
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
    assert media.read_image(out / "steps" / "step_00002.png").shape == (70, 150, 3)

    record = json.loads((out / "run.json").read_text())
    assert record["notice"] and "random weights" in record["notice"]
    assert "random weights" in capsys.readouterr().err
    assert record["seed"] == 0 and "--save-every" in record["argv"]
    assert record["config"]["edit"]["guidance_scale"] == 7.5
    assert record["config"]["edit"]["image_guidance_scale"] == 5.0  # the official panorama script's s_I
    assert record["status"] == "finished"
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
    assert record["config"]["edit"]["image_guidance_scale"] == 1.5  # the official video command's s_I
    assert media.read_image(out / "comparison.png").shape[1] > 64  # a row of frames


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
        (["--guidance-scale", "-1"], "--guidance-scale -1.0 is out of range"),
        (["--image-guidance-scale", "nan"], "--image-guidance-scale nan is out of range"),
        (["--t-min", "600"], "timestep range"),
        (["--steps", "0"], "--steps 0: use at least 1"),
        (["--lr", "-1"], "--lr -1.0: use a positive learning rate"),
        (["--window", "0"], "use at least 1 latent pixel"),
        (["--ip2p-model", "/no/such/model"], "does not exist"),
        (["--window", "8", "--stride", "12"], "--stride 12 is larger than --window 8"),
        (["--max-megapixels", "0"], "--max-megapixels 0.0: use a positive number"),
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
    assert media.read_image(out / "edited.png").shape == (70, 150, 3) and not (out / "note.txt").exists()
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
    assert _panorama_run(panorama, empty, "--overwrite") == 0
    assert json.loads((empty / "run.json").read_text())["status"] == "finished"


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
    assert np.array_equal(media.read_image(frames / "0.png"), _video_frames(1)[0])


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
        assert main(argv + ["--ip2p-model", "tiny", "--steps", "6", "--lr", "5", "--seed", "3", "--quiet"] + flag) == 0
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


def test_the_model_flag_is_ip2p_model_and_model_is_an_alias(panorama, tmp_path):
    assert _panorama_run(panorama, tmp_path / "a", "--steps", "1") == 0  # FAST spells it --ip2p-model
    assert _panorama_run(panorama, tmp_path / "b", "--steps", "1", "--model", "tiny") == 0
    for name in ("a", "b"):
        assert json.loads((tmp_path / name / "run.json").read_text())["config"]["guidance"]["model"] == "tiny"


def test_help_shows_the_model_flag_the_sds_ablation_and_where_sizes_come_from(capsys):
    from csd_nerf.media.cli import build_parser

    for command in ("panorama", "video"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--ip2p-model MODEL, --model MODEL" in text
        assert "plain SDS is --baseline noise --no-svgd" in text
        assert "(default: None)" not in text
    assert "the model's training size, 512 for IP2P" in text  # video --size
    with pytest.raises(SystemExit):
        build_parser().parse_args(["panorama", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the model's training size, 64 = 512 px for IP2P" in text and "a quarter window" in text


def test_window_stride_and_video_size_come_from_the_model(panorama, video, tmp_path):
    """The miniature UNet is trained at 8 latents (64 px): windows of 8 on a stride of 2, videos at 64 px."""
    out = tmp_path / "pano"
    assert main(["panorama", "--input", str(panorama), "--output", str(out), "--prompt", "paint it"] + FAST) == 0
    info = json.loads((out / "run.json").read_text())["input"]
    assert (info["window"], info["stride"], info["window_px"]) == (8, 2, 64)
    out = tmp_path / "video"
    assert main(["video", "--input", str(video), "--output", str(out), "--prompt", "paint it"] + FAST) == 0
    assert json.loads((out / "run.json").read_text())["input"]["working_size"] == [64, 48]


def test_a_prompt_that_is_not_utf8_is_one_line_before_the_model_loads(panorama, tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded for an unusable prompt")

    monkeypatch.setattr("csd_nerf.guidance.GuidanceConfig.setup", no_model)
    out = tmp_path / "out"
    bad = b"Turn it \xff red".decode("utf-8", "surrogateescape")  # what Python makes of the shell's bytes
    assert _panorama_run(panorama, out, "--prompt", bad) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("csd-edit-2d: error: ") and "not valid UTF-8" in err and "\n" not in err
    assert "Traceback" not in err and not out.exists() and _leftovers(tmp_path) == []


def test_a_huge_image_is_one_line_that_says_how_to_go_beyond(tmp_path, capsys):
    from test_media_files import png_header

    big = tmp_path / "big.png"
    big.write_bytes(png_header(15000, 13000))
    out = tmp_path / "out"
    argv = ["panorama", "--input", str(big), "--output", str(out), "--prompt", "paint it"]
    assert main(argv + FAST) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("csd-edit-2d: error: ") and "195 megapixels" in err and "--max-megapixels" in err
    assert "\n" not in err and not out.exists()


def test_a_stride_larger_than_the_models_window_is_refused_before_writing(panorama, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["panorama", "--input", str(panorama), "--output", str(out), "--prompt", "paint it", "--stride", "12"]
    assert main(argv + FAST) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the tiny model's warning: checked once loaded
    assert err.startswith("csd-edit-2d: error: --stride 12 is larger than --window 8") and "never be edited" in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_a_sliver_is_not_enlarged_beyond_bounds(tmp_path, capsys):
    sliver = tmp_path / "sliver.png"
    media.write_image(sliver, np.full((4, 480, 3), 100, np.uint8))
    out = tmp_path / "out"
    argv = ["panorama", "--input", str(sliver), "--output", str(out), "--prompt", "paint it"]
    assert main(argv + FAST) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("csd-edit-2d: error: the input is 480x4 px") and "7680x64" in err and "16 windows'" in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_long_work_says_what_it_is_doing(panorama, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # as on a terminal: phases show (and go, leaving errors alone)
    monkeypatch.setenv("COLUMNS", "300")
    out = tmp_path / "out"
    argv = ["panorama", "--input", str(panorama), "--output", str(out), "--prompt", "paint it"]
    assert main(argv + ["--ip2p-model", "tiny", "--steps", "2", "--window", "8", "--stride", "4"]) == 0
    err = capsys.readouterr().err
    for phase in ("reading", "loading InstructPix2Pix tiny on cpu", "encoding 152x72 px", "decoding and writing"):
        assert phase in err, phase


def test_a_full_disk_names_the_file_and_leaves_nothing(panorama, tmp_path, capsys, monkeypatch):
    import errno

    from PIL import Image

    save = Image.Image.save

    def full_at_the_result(self, fp, *args, **kwargs):
        if Path(fp).name == "edited.png":
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", full_at_the_result)
    out = tmp_path / "out"
    assert _panorama_run(panorama, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"csd-edit-2d: error: cannot write {out / 'edited.png'} (No space left on device): "
        "free some space or choose another output"
    )
    assert "Traceback" not in "\n".join(err) and not out.exists() and _leftovers(tmp_path) == []


def test_a_full_disk_at_the_run_record_names_it(panorama, tmp_path, capsys, monkeypatch):
    import errno

    write_text = Path.write_text

    def full_at_the_record(self, *args, **kwargs):
        if self.name == "run.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_at_the_record)
    out = tmp_path / "out"
    assert _panorama_run(panorama, out) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"csd-edit-2d: error: cannot write {out / 'run.json'} (No space left on device)")
    assert not out.exists() and _leftovers(tmp_path) == []


def test_a_panorama_with_alpha_keeps_it(tmp_path):
    rgb = np.full((70, 150, 3), 120, np.uint8)
    alpha = np.zeros((70, 150), np.uint8)
    alpha[10:60, 20:130] = 255
    from PIL import Image

    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "logo.png")
    out = tmp_path / "out"
    argv = ["panorama", "--input", str(tmp_path / "logo.png"), "--output", str(out), "--prompt", "paint it"]
    assert main(argv + FAST + PANORAMA) == 0
    edited, kept = media.read_image_alpha(out / "edited.png")
    assert edited.shape == (70, 150, 3) and np.array_equal(kept, alpha)
    assert json.loads((out / "run.json").read_text())["input"]["alpha"] is True


def test_a_phone_video_is_written_upright(tmp_path):
    from test_media_files import rotated_clip

    clip = rotated_clip(tmp_path)  # stored 64x48, shown 48x64
    out = tmp_path / "out"
    argv = ["video", "--input", str(clip), "--output", str(out), "--prompt", "paint it", "--size", "32"]
    assert main(argv + FAST) == 0
    edited = media.read_video(out / "edited.mp4")
    assert edited.size == (48, 64) and edited.rotation == 0 and len(edited.frames) == 6
    record = json.loads((out / "run.json").read_text())
    assert record["input"]["rotation_applied"] == 90 and any("rotation" in n for n in record["notices"])


def test_a_gif_keeps_its_frame_timing_through_an_edit(tmp_path):
    from PIL import Image

    frames = _video_frames(4)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(tmp_path / "in.gif", save_all=True, append_images=images[1:], duration=120, loop=0)
    out = tmp_path / "out"
    argv = ["video", "--input", str(tmp_path / "in.gif"), "--output", str(out), "--prompt", "paint it"]
    assert main(argv + FAST + ["--size", "32"]) == 0
    with Image.open(out / "edited.gif") as gif:
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
    assert durations == [120] * 4


def test_a_video_keeps_its_sound_through_an_edit(tmp_path):
    import av
    from test_media_files import run_ffmpeg

    source = tmp_path / "talk.mp4"
    run_ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000",
        "-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(source),
    )  # fmt: skip
    out = tmp_path / "out"
    argv = ["video", "--input", str(source), "--output", str(out), "--prompt", "paint it", "--size", "32"]
    assert main(argv + FAST) == 0
    with av.open(str(out / "edited.mp4")) as result:
        assert len(result.streams.audio) == 1
        stream = result.streams.audio[0]
        seconds = sum(frame.samples for frame in result.decode(stream)) / stream.rate
    assert seconds == pytest.approx(1.0, abs=0.15)
    assert len(media.read_video(out / "edited.mp4").frames) == 10
    assert json.loads((out / "run.json").read_text())["input"]["sound"] == "aac track kept"


def test_a_frame_folder_with_two_frames_of_one_name_is_refused(tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for name, frame in zip(("frame0.png", "frame1.png", "frame1.jpg"), _video_frames(3), strict=True):
        media.write_image(folder / name, frame)
    out = tmp_path / "out"
    argv = ["video", "--input", str(folder), "--output", str(out), "--prompt", "paint it"]
    assert main(argv + FAST) == 2
    err = capsys.readouterr().err.strip()
    assert "share the name 'frame1'" in err and "\n" not in err and not out.exists()


def test_ctrl_c_keeps_what_save_every_wrote_and_says_where(panorama, tmp_path, capsys, monkeypatch):
    import csd_nerf.media.cli as cli

    real = cli.run_edit

    def stopped_after_four(editor, scene, parameters, optim, on_step, on_save, save_every):
        from dataclasses import replace

        real(editor, scene, parameters, replace(optim, steps=4), on_step, on_save, save_every)
        on_save(4)  # the real loop saves at 2; a longer run would have saved at 4 too
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_edit", stopped_after_four)
    out = tmp_path / "out"
    assert _panorama_run(panorama, out, "--save-every", "2", "--steps", "10") == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"csd-edit-2d: interrupted (Ctrl-C) at step 4 of 10: the results saved every 2 steps are kept in "
        f"{out / 'steps'}"
    )
    for step in (2, 4):
        assert media.read_image(out / "steps" / f"step_{step:05d}.png").shape == (70, 150, 3)
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted at step 4 of 10"
    assert record["output"]["files"] == ["steps/step_00002.png", "steps/step_00004.png"]
    assert _leftovers(tmp_path) == []

    # An earlier, finished result is replaced only by a finished run: the saved steps go beside it.
    finished = tmp_path / "finished"
    monkeypatch.setattr(cli, "run_edit", real)
    assert _panorama_run(panorama, finished) == 0
    before = (finished / "edited.png").read_bytes()
    monkeypatch.setattr(cli, "run_edit", stopped_after_four)
    assert _panorama_run(panorama, finished, "--save-every", "2", "--steps", "10", "--overwrite") == 130
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("finished.interrupted-")]
    assert len(kept) == 1 and str(kept[0] / "steps") in capsys.readouterr().err
    assert (finished / "edited.png").read_bytes() == before
    assert media.read_image(kept[0] / "steps" / "step_00004.png").shape == (70, 150, 3)
