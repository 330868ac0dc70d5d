"""The video scene and media: frame geometry, reading/writing every kind of video, SVGD agreement of frames."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from csd_nerf.editor import CSDEditConfig, CSDEditor
from csd_nerf.media import io as media
from csd_nerf.media.jobs import VideoJob
from csd_nerf.media.optimise import OptimConfig, run_edit
from csd_nerf.media.video import VideoScene, working_size

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _frames(count: int = 8, height: int = 48, width: int = 64) -> np.ndarray:
    """A moving gradient, so frames differ and their order is visible."""
    x = np.linspace(0, 255, width)[None, None, :]
    y = np.linspace(0, 255, height)[None, :, None]
    t = np.arange(count)[:, None, None] * 20
    r = (x + t) % 256 + 0 * y
    g = (y + t) % 256 + 0 * x
    b = np.full_like(r, 128)
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def test_working_size_keeps_aspect_on_multiples_of_the_latent_factor():
    assert working_size(1920, 1080, 512, 8) == (512, 288)
    assert working_size(1080, 1920, 512, 8) == (288, 512)
    assert working_size(512, 512, 512, 8) == (512, 512)
    assert working_size(97, 65, 64, 8) == (64, 40)
    assert working_size(1000, 10, 64, 8) == (64, 8)  # never below one latent pixel
    assert working_size(97, 65, 64, 16) == (64, 48)
    with pytest.raises(ValueError):
        working_size(64, 64, 4, 8)


@pytest.mark.parametrize(("size", "fps"), [((64, 48), Fraction(12)), ((65, 49), Fraction(30000, 1001))])
def test_mp4_round_trip_keeps_frame_count_size_and_fps(tmp_path, size, fps):
    frames = _frames(9, size[1], size[0])
    path = media.write_video(tmp_path / "clip.mp4", media.Video(frames, fps, "file"))
    video = media.read_video(path)
    assert video.frames.shape == frames.shape
    assert video.fps == fps
    assert np.abs(video.frames.astype(int) - frames).mean() < 6  # lossy, but the same pictures


def test_gif_round_trip_keeps_frame_count_and_fps(tmp_path):
    frames = _frames(6)
    path = media.write_video(tmp_path / "clip.gif", media.Video(frames, Fraction(10), "gif"))
    video = media.read_video(path)
    assert video.kind == "gif" and video.frames.shape == frames.shape and video.fps == 10


def test_frame_folder_is_read_in_natural_order_and_written_with_its_names(tmp_path):
    frames = _frames(11)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        media.write_image(folder / f"f{i}.png", frame)  # f10 sorts after f9, not after f1
    video = media.read_video(folder, folder_fps=7.5)
    assert np.array_equal(video.frames, frames)
    assert video.fps == Fraction(15, 2) and video.frame_names[-1] == "f10.png"
    out = media.write_video(tmp_path / "out", video)
    assert sorted(p.name for p in out.iterdir()) == sorted(video.frame_names)


def test_unreadable_and_inconsistent_inputs_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(media.MediaError, match="cannot read video"):
        media.read_video(bad)
    with pytest.raises(media.MediaError, match="does not exist"):
        media.read_video(tmp_path / "missing.mp4")
    folder = tmp_path / "mixed"
    folder.mkdir()
    media.write_image(folder / "a.png", _frames(1)[0])
    media.write_image(folder / "b.png", _frames(1, 32, 32)[0])
    with pytest.raises(media.MediaError, match="differ in size"):
        media.read_video(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(media.MediaError, match="holds no frames"):
        media.read_video(empty)


def test_job_resizes_frames_to_the_working_size_and_back(tiny_guidance):
    job = VideoJob(media.Video(_frames(4, 49, 65), Fraction(10), "file"), long_side=32)
    scene = job.build_scene(tiny_guidance)
    assert job.working.shape == (4, 24, 32, 3)
    assert scene.parameter.shape == (4, 4, 3, 4)
    assert job.render(tiny_guidance, scene).shape == (4, 49, 65, 3)


def test_each_step_draws_all_frames_when_they_fit(tiny_guidance):
    z = torch.randn(5, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    scene = VideoScene(z, tiny_guidance.conditioning_from_latents(z))
    editor = CSDEditor(tiny_guidance, CSDEditConfig(prompt="paint it", num_particles=24))
    assert sorted(editor.step(scene).ids) == [0, 1, 2, 3, 4]
    assert scene.parameter.grad is not None and scene.parameter.grad.abs().sum(dim=(1, 2, 3)).min() > 0
    batched = CSDEditor(tiny_guidance, CSDEditConfig(prompt="paint it", num_particles=2))
    drawn = [batched.sample_ids(scene) for _ in range(5)]
    assert all(len(ids) == 2 for ids in drawn)
    assert set(sum(drawn[:2], [])) | set(drawn[2][:1]) == {0, 1, 2, 3, 4}  # an epoch visits every frame


def test_svgd_makes_frames_of_a_static_video_agree_more_than_independent_frames(tiny_guidance):
    """Eight identical frames: any difference between the results is the update's own spread."""
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    z, c = tiny_guidance.encode_source(image)
    spreads = {}
    for coupling in (True, False):
        per_seed = []
        for seed in range(2):  # the same seeds for both: same timesteps and noise, only the coupling differs
            scene = VideoScene(z.expand(8, -1, -1, -1).clone(), c.expand(8, -1, -1, -1).clone())
            config = CSDEditConfig(prompt="paint it", num_particles=8, coupling=coupling, seed=seed)
            run_edit(CSDEditor(tiny_guidance, config), scene, scene.parameters(), OptimConfig(steps=6, lr=0.5))
            per_seed.append(scene.parameter.detach().std(dim=0).mean().item())
        spreads[coupling] = per_seed
    assert all(c < i for c, i in zip(spreads[True], spreads[False], strict=True)), spreads
