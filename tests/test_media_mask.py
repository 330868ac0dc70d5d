"""Masks for panoramas and videos: white = edit, black = keep, grey = blend.

The mask weights the scene's latent gradient (zero outside it) and the written result is composited with the
source at the input's own size, so that pixels where the mask is black are the input's to the byte. That holds
for PNG outputs (a panorama, a folder of frames); an MP4 or GIF is re-encoded after compositing (lossy, or a
256-colour palette), so for those the frames are checked just before encoding.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from csd_nerf.editor import CSDEditConfig, CSDEditor
from csd_nerf.media import io as media
from csd_nerf.media.cli import build_parser, main
from csd_nerf.media.jobs import PanoramaJob
from csd_nerf.media.latents import weight_gradient
from csd_nerf.media.mask import composite, latent_weight, luminance, mask_levels
from csd_nerf.media.panorama import PanoramaScene
from csd_nerf.media.video import VideoScene

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["--ip2p-model", "tiny", "--steps", "3", "--lr", "50", "--quiet"]  # lr 50: the tiny edit shows in pixels
PANORAMA = ["--window", "8", "--stride", "4"]


def _picture(height: int = 70, width: int = 150, shift: int = 0) -> np.ndarray:
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    return np.stack([(x + shift) % 256 + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)


def _levels(height: int = 70, width: int = 150) -> np.ndarray:
    """Black left, a grey (128) band, white right."""
    levels = np.zeros((height, width), np.uint8)
    levels[:, 80:90] = 128
    levels[:, 90:] = 255
    return levels


def _write_mask(path: Path, levels: np.ndarray) -> Path:
    media.write_image(path, np.repeat(levels[..., None], 3, axis=-1))
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name)


# --- reading: luminance, alpha, pooling ------------------------------------------------------------------------


def test_a_mask_is_its_luminance_and_its_alpha_only_when_its_colour_is_uniform():
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [128, 128, 128], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    assert luminance(rgb).tolist() == [[0, 255, 128, 76, 150, 29]]  # PIL's "L" (Rec. 601)
    assert np.array_equal(luminance(rgb), np.asarray(Image.fromarray(rgb).convert("L")))
    alpha = np.array([[0, 255, 0, 255, 0, 255]], np.uint8)
    assert mask_levels(rgb, alpha)[1] == "luminance"  # the colour says something: the alpha is ignored
    strokes = np.zeros_like(rgb)  # black strokes on a transparent layer: only the alpha says where
    levels, signal = mask_levels(strokes, alpha)
    assert signal == "alpha" and np.array_equal(levels, alpha)


def test_latent_weight_is_the_mean_of_each_latent_pixels_pixels():
    levels = np.zeros((1, 16, 24), np.uint8)
    levels[:, :, 8:16] = 255  # the middle latent column, whole
    levels[:, :, 20:24] = 255  # half of the last latent column
    levels[:, 8:, 0:8] = 128  # the lower left latent pixel, grey
    weight = latent_weight(levels, (24, 16), 8)
    assert weight.shape == (1, 1, 2, 3)
    expected = torch.tensor([[0.0, 1.0, 0.5], [128 / 255, 1.0, 0.5]])
    assert torch.allclose(weight[0, 0], expected, atol=1e-6)
    # at another working size (a video's): resized first, zero stays zero away from the border
    wide = np.zeros((1, 48, 96), np.uint8)
    wide[:, :, 48:] = 255
    small = latent_weight(wide, (32, 16), 8)[0, 0]
    assert small.shape == (2, 4) and (small[:, 0] == 0).all() and (small[:, -1] == 1).all()


def test_composite_is_the_source_where_black_the_edit_where_white_and_blends_grey():
    rng = np.random.default_rng(0)
    source, edited = rng.integers(0, 256, (2, 4, 32, 3), dtype=np.uint8)
    levels = np.tile(np.array([0, 255, 128, 64], np.uint8), 32).reshape(4, 32)
    out = composite(source, edited, levels)
    assert np.array_equal(out[levels == 0], source[levels == 0])
    assert np.array_equal(out[levels == 255], edited[levels == 255])
    for level in (128, 64):
        w = level / 255
        exact = np.floor(w * edited.astype(float) + (1 - w) * source + 0.5)  # round half up
        assert np.array_equal(out[levels == level], exact[levels == level])
    # 128 is the grey nearest 0.5 (128/255 = 0.502): within one level of the rounded average, never further
    average = np.floor((edited.astype(int) + source + 1) / 2)
    assert np.abs(out[levels == 128].astype(int) - average[levels == 128]).max() <= 1
    # frames: one mask for every frame, or one per frame
    frames = np.stack([source, edited])
    assert np.array_equal(
        composite(frames, frames[::-1], levels[None]), np.stack([out, composite(edited, source, levels)])
    )


def test_weight_gradient_is_an_identity_whose_backward_is_weighted():
    parameter = torch.nn.Parameter(torch.ones(2, 3))
    weight = torch.tensor([[0.0, 0.5, 1.0]])
    out = weight_gradient(parameter, weight)
    assert torch.equal(out, parameter.detach())
    out.backward(torch.full((2, 3), 4.0))
    assert torch.equal(parameter.grad, torch.tensor([[0.0, 2.0, 4.0]] * 2))


# --- the scenes: the latent gradient is zero outside the mask -------------------------------------------------


def test_panorama_gradient_is_zero_outside_the_mask_and_not_inside(tiny_guidance):
    z = torch.randn(1, 4, 8, 24, generator=torch.Generator().manual_seed(0))
    weight = torch.zeros(8, 24)
    weight[:, 14:] = 1.0
    weight[:, 12:14] = 0.5
    scene = PanoramaScene(z, tiny_guidance.conditioning_from_latents(z), window=8, stride=4, weight=weight)
    assert (scene.windows_total, scene.num_views) == (5, 3)  # windows at 0 and 4 lie outside: never drawn
    editor = CSDEditor(tiny_guidance, CSDEditConfig(prompt="paint it", num_particles=3))
    editor.step(scene)
    grad = scene.canvas.grad[0]
    assert torch.equal(grad[:, weight == 0], torch.zeros_like(grad[:, weight == 0]))  # exactly zero
    assert (grad[:, weight > 0].abs().sum(dim=0) > 0).all()  # every weighted latent pixel moves

    unmasked = PanoramaScene(z, tiny_guidance.conditioning_from_latents(z), window=8, stride=4)
    CSDEditor(tiny_guidance, CSDEditConfig(prompt="paint it", num_particles=5)).step(unmasked)
    assert (unmasked.canvas.grad[0][:, weight == 0] != 0).any()  # without the mask it would move there


def test_video_gradient_is_zero_outside_each_frames_mask(tiny_guidance):
    z = torch.randn(3, 4, 4, 6, generator=torch.Generator().manual_seed(0))
    weight = torch.zeros(3, 1, 4, 6)
    weight[0, :, :, 3:] = 1.0  # right half of frame 0
    weight[1, :, :2] = 0.25  # top of frame 1, weakly; frame 2 is kept whole
    scene = VideoScene(z, tiny_guidance.conditioning_from_latents(z), weight)
    CSDEditor(tiny_guidance, CSDEditConfig(prompt="paint it", num_particles=3)).step(scene)
    grad = scene.parameter.grad
    outside = (weight == 0).expand_as(grad)
    assert torch.equal(grad[outside], torch.zeros_like(grad[outside]))
    assert (grad.abs().sum(dim=1, keepdim=True)[weight > 0] > 0).all()


# --- through the command: byte identity, blends, previews, run.json --------------------------------------------


def test_panorama_outside_the_mask_is_the_input_to_the_byte(tmp_path):
    """An RGBA input with a grey band in the mask: the source's pixels and alpha where black, the edit where white."""
    source = _picture()
    alpha = np.full((70, 150), 255, np.uint8)
    alpha[:10] = 0
    Image.fromarray(np.dstack([source, alpha]), "RGBA").save(tmp_path / "pano.png")
    levels = _levels()
    mask = _write_mask(tmp_path / "mask.png", levels)
    out = tmp_path / "out"
    argv = ["panorama", "--input", str(tmp_path / "pano.png"), "--mask", str(mask), "--output", str(out)]
    assert main(argv + ["--prompt", "paint it", "--save-every", "2"] + FAST + PANORAMA) == 0

    edited, kept = media.read_image_alpha(out / "edited.png")
    assert np.array_equal(edited[levels == 0], source[levels == 0])  # to the byte
    assert np.array_equal(kept, alpha)
    assert np.abs(edited[levels == 255].astype(int) - source[levels == 255]).mean() > 20  # observed 80: edited
    step = media.read_image(out / "steps" / "step_00002.png")  # the step preview is the composite too
    assert np.array_equal(step[levels == 0], source[levels == 0])

    record = json.loads((out / "run.json").read_text())
    assert record["input"]["mask"] == {
        "path": str(mask.absolute()),
        "coverage": round(float((levels > 0).mean()), 6),
        "frames": 1,
        "from": "luminance",
    }
    assert record["input"]["windows_outside_mask"] == 2 and record["config"]["args"]["mask"] == str(mask)


def test_a_grey_mask_blends_the_source_and_the_edit(tiny_guidance):
    source = _picture(24, 72)
    levels = np.full((24, 72), 128, np.uint8)
    levels[:, :24] = 0
    levels[:, 48:] = 255
    job = PanoramaJob(source, window=8, stride=4)
    job.mask = _mask(levels)
    scene = job.build_scene(tiny_guidance)
    with torch.no_grad():
        scene.canvas.add_(torch.randn(scene.canvas.shape, generator=torch.Generator().manual_seed(0)))
    blended = job.render(tiny_guidance, scene)
    job.mask = None
    edit = job.render(tiny_guidance, scene)
    assert np.array_equal(blended, composite(source, edit, levels))
    assert np.array_equal(blended[:, :24], source[:, :24]) and np.array_equal(blended[:, 48:], edit[:, 48:])
    grey = blended[:, 24:48].astype(int)
    assert np.abs(grey - (edit[:, 24:48].astype(int) + source[:, 24:48] + 1) // 2).max() <= 1


def _mask(levels: np.ndarray):
    from csd_nerf.media.mask import Mask

    return Mask(levels.reshape(-1, *levels.shape[-2:]), Path("mask.png"))


def _frame_folder(folder: Path, count: int = 4, height: int = 48, width: int = 64) -> np.ndarray:
    folder.mkdir()
    frames = np.stack([_picture(height, width, shift=12 * i) for i in range(count)])
    for i, frame in enumerate(frames):
        media.write_image(folder / f"{i:03d}.png", frame)
    return frames


def _video_run(source: Path, mask: Path, out: Path, *extra: str) -> int:
    argv = ["video", "--input", str(source), "--mask", str(mask), "--output", str(out), "--prompt", "paint it"]
    return main(argv + ["--size", "64"] + FAST + list(extra))


def test_a_frame_folder_outside_each_frames_mask_is_the_input_to_the_byte(tmp_path):
    frames = _frame_folder(tmp_path / "frames")
    masks = tmp_path / "masks"
    masks.mkdir()
    levels = np.zeros((4, 48, 64), np.uint8)
    for i in range(4):
        levels[i, :, 16 * i : 16 * i + 24] = 255  # a band that moves along
        _write_mask(masks / f"m{i}.png", levels[i])
    out = tmp_path / "out"
    assert _video_run(tmp_path / "frames", masks, out) == 0
    edited = media.read_video(out / "edited").frames  # PNG frames: no lossy step after compositing
    assert np.array_equal(edited[levels == 0], frames[levels == 0])
    for i in range(4):
        assert np.abs(edited[i][levels[i] > 0].astype(int) - frames[i][levels[i] > 0]).mean() > 10  # observed 54 to 92
    info = json.loads((out / "run.json").read_text())["input"]["mask"]
    assert info["frames"] == 4 and info["coverage"] == round(float((levels > 0).mean()), 6)


def test_one_mask_image_applies_to_every_frame(tmp_path):
    frames = _frame_folder(tmp_path / "frames", count=3)
    levels = np.zeros((48, 64), np.uint8)
    levels[8:40, 24:56] = 255
    mask = _write_mask(tmp_path / "mask.png", levels)
    out = tmp_path / "out"
    assert _video_run(tmp_path / "frames", mask, out) == 0
    edited = media.read_video(out / "edited").frames
    for frame, result in zip(frames, edited, strict=True):
        assert np.array_equal(result[levels == 0], frame[levels == 0])
        assert np.abs(result[levels > 0].astype(int) - frame[levels > 0]).mean() > 10  # observed 54 to 92
    assert json.loads((out / "run.json").read_text())["input"]["mask"]["frames"] == 1


def test_an_mp4_is_composited_exactly_before_it_is_encoded(tmp_path, monkeypatch):
    """H.264 is lossy: the written MP4 cannot hold the input's pixels to the byte; the frames handed to the
    encoder do, and a note says so."""
    frames = np.stack([_picture(48, 64, shift=12 * i) for i in range(4)])
    clip = media.write_video(tmp_path / "clip.mp4", media.Video(frames, Fraction(10), "file"))
    source = media.read_video(clip).frames  # what the edit reads (decoded H.264)
    levels = np.zeros((48, 64), np.uint8)
    levels[:, 32:] = 255
    mask = _write_mask(tmp_path / "mask.png", levels)
    handed: list[np.ndarray] = []
    real = media.write_video

    def recording(path, video):
        handed.append(video.frames.copy())
        return real(path, video)

    monkeypatch.setattr(media, "write_video", recording)
    out = tmp_path / "out"
    assert _video_run(clip, mask, out) == 0
    assert len(handed) == 1 and np.array_equal(handed[0][:, levels == 0], source[:, levels == 0])
    assert any(
        "until the edited.mp4 is encoded" in note for note in json.loads((out / "run.json").read_text())["notices"]
    )


# --- one-line errors, before anything is written ----------------------------------------------------------------


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a bad mask must be refused before the model loads")

    monkeypatch.setattr("csd_nerf.guidance.GuidanceConfig.setup", refuse)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("csd-edit-2d: error: --mask") and "\n" not in err and "Traceback" not in err, err
    return err


def test_a_mask_of_another_size_all_black_or_unreadable_is_one_line(tmp_path, capsys, no_model):
    media.write_image(tmp_path / "pano.png", _picture())
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG not really")
    black = _write_mask(tmp_path / "black.png", np.zeros((70, 150), np.uint8))
    small = _write_mask(tmp_path / "small.png", _levels(48, 64))
    (tmp_path / "folder").mkdir()
    clip = media.write_video(
        tmp_path / "clip.mp4", media.Video(np.zeros((2, 70, 150, 3), np.uint8), Fraction(10), "file")
    )
    cases = [
        (small, f"--mask {small} is 64x48 but the input is 150x70: make the mask at the input's own size"),
        (black, f"--mask {black} is all black: nothing would be edited"),
        (garbage, f"cannot read --mask {garbage}"),
        (tmp_path / "missing.png", f"--mask {tmp_path / 'missing.png'} does not exist"),
        (tmp_path / "folder", "is a folder: a panorama's mask is one image"),
        (clip, f"--mask {clip}: unsupported file type '.mp4'; use an image"),
    ]
    for mask, message in cases:
        out = tmp_path / "out"
        argv = ["panorama", "--input", str(tmp_path / "pano.png"), "--mask", str(mask), "--output", str(out)]
        assert main(argv + ["--prompt", "paint it"] + FAST) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("csd-edit-2d: error: ") and message in err and "\n" not in err, (mask, err)
        assert not out.exists() and _leftovers(tmp_path) == []


def test_a_video_mask_with_another_frame_count_or_size_is_one_line(tmp_path, capsys, no_model):
    _frame_folder(tmp_path / "frames", count=4)
    two = tmp_path / "two"
    two.mkdir()
    for i in range(2):
        _write_mask(two / f"{i}.png", _levels(48, 64))
    wide = media.write_video(
        tmp_path / "wide.mp4", media.Video(np.full((4, 48, 80, 3), 255, np.uint8), Fraction(10), "file")
    )
    out = tmp_path / "out"
    assert _video_run(tmp_path / "frames", two, out) == 2
    err = _one_line(capsys)
    assert f"--mask {two} has 2 frames but the input has 4: give one mask frame per input frame, or one image" in err
    assert _video_run(tmp_path / "frames", wide, out) == 2
    assert f"--mask {wide} is 80x48 but the input's frames are 64x48" in _one_line(capsys)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_help_documents_the_mask():
    for command, what in (("panorama", "a mask image"), ("video", "one image for every frame")):
        text = " ".join(build_parser()._subparsers._group_actions[0].choices[command].format_help().split())
        assert (
            "--mask MASK" in text and what in text and "white = edit, black = keep" in text and "grey = blend" in text
        )
