"""Media files kept as they came: phone rotation, GIF timing and transparency, sound, alpha, frame names, size limit."""

from __future__ import annotations

import errno
import shutil
import struct
import subprocess
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from csd_nerf.media import io as media


def ffmpeg() -> str:
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg(), "-y", "-loglevel", "error", *args], check=True, timeout=120)


def pattern(count: int = 6, height: int = 48, width: int = 64) -> np.ndarray:
    """Frames whose orientation shows: a horizontal ramp in red, a bright block at the top-left corner."""
    frames = np.zeros((count, height, width, 3), np.uint8)
    frames[..., 0] = np.linspace(0, 255, width)[None, None, :]
    frames[:, : height // 4, : width // 4] = 255
    frames[..., 2] = (np.arange(count) * 30)[:, None, None]
    return frames


def rotated_clip(tmp_path: Path, degrees: int = 90) -> Path:
    """A clip stored sideways with rotation metadata, as a phone writes it (made with ffmpeg, not with our code)."""
    plain = media.write_video(tmp_path / "plain.mp4", media.Video(pattern(), Fraction(10), "file"))
    rotated = tmp_path / "phone.mp4"
    run_ffmpeg("-i", str(plain), "-c", "copy", "-metadata:s:v:0", f"rotate={degrees}", str(rotated))
    with av.open(str(rotated)) as container:
        if not next(container.decode(video=0)).rotation:  # ffmpeg >= 6 dropped the rotate tag: its own option
            run_ffmpeg("-display_rotation", str(-degrees), "-i", str(plain), "-c", "copy", str(rotated))
    return rotated


def as_players_show_it(path: Path) -> np.ndarray:
    """The frames as ffmpeg shows them (it applies the rotation), ``[T, H, W, 3]``."""
    probe = media.read_video(path)  # only for the count; the pixels come from ffmpeg
    raw = subprocess.run(
        [ffmpeg(), "-loglevel", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    count = len(probe.frames)
    return np.frombuffer(raw, np.uint8).reshape(count, -1, 3)


def test_a_phone_video_is_read_upright(tmp_path):
    clip = rotated_clip(tmp_path)
    video = media.read_video(clip)
    assert video.size == (48, 64) and video.rotation == 90  # stored 64x48, shown 48x64
    shown = as_players_show_it(clip).reshape(video.frames.shape)
    assert np.abs(video.frames.astype(int) - shown).mean() < 3
    # and it is the picture turned, not merely transposed: the bright block is where ffmpeg shows it
    corners = [video.frames[0, :8, :8].mean(), video.frames[0, -8:, :8].mean()]
    expected = [shown[0, :8, :8].mean(), shown[0, -8:, :8].mean()]
    assert np.allclose(corners, expected, atol=10)


def test_gif_frame_timing_survives_a_round_trip(tmp_path):
    frames = pattern(5)
    source = tmp_path / "in.gif"
    images = [Image.fromarray(f) for f in frames]
    images[0].save(source, save_all=True, append_images=images[1:], duration=120, loop=0)
    video = media.read_video(source)
    out = media.write_video(tmp_path / "out.gif", video)
    with Image.open(out) as gif:
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
    assert durations == [120] * 5  # was 110: 1000 / (25/3) truncated


def test_gif_with_frames_of_different_lengths_keeps_each(tmp_path):
    frames = pattern(4)
    source = tmp_path / "in.gif"
    images = [Image.fromarray(f) for f in frames]
    images[0].save(source, save_all=True, append_images=images[1:], duration=[100, 200, 50, 300], loop=0)
    out = media.write_video(tmp_path / "out.gif", media.read_video(source))
    with Image.open(out) as gif:
        got = []
        for index in range(gif.n_frames):
            gif.seek(index)
            got.append(gif.info["duration"])
    assert got == [100, 200, 50, 300]


def test_an_image_with_alpha_keeps_it_through_reading_and_writing(tmp_path):
    rgb = pattern(1)[0]
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[10:30, 5:50] = 255
    alpha[30:40] = 128
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "a.png")
    got_rgb, got_alpha = media.read_image_alpha(tmp_path / "a.png")
    assert np.array_equal(got_rgb, rgb) and np.array_equal(got_alpha, alpha)
    media.write_image(tmp_path / "b.png", got_rgb, got_alpha)
    with Image.open(tmp_path / "b.png") as back:
        assert back.mode == "RGBA" and np.array_equal(np.asarray(back)[..., 3], alpha)
    Image.fromarray(rgb).save(tmp_path / "opaque.png")
    assert media.read_image_alpha(tmp_path / "opaque.png")[1] is None


def test_a_transparent_gif_stays_transparent(tmp_path):
    frames = pattern(3)
    alpha = np.full(frames.shape[:3], 255, np.uint8)
    alpha[:, 20:, 30:] = 0
    images = [Image.fromarray(np.dstack([f, a]), "RGBA") for f, a in zip(frames, alpha, strict=True)]
    images[0].save(tmp_path / "in.gif", save_all=True, append_images=images[1:], duration=100, loop=0, disposal=2)
    video = media.read_video(tmp_path / "in.gif")
    assert video.alpha is not None and (video.alpha[:, 20:, 30:] == 0).all() and (video.alpha[:, :20] == 255).all()
    back = media.read_video(media.write_video(tmp_path / "out.gif", video))
    assert back.alpha is not None and np.array_equal(back.alpha > 0, video.alpha > 0)


def test_frames_with_one_name_and_two_extensions_are_refused(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = pattern(3)
    media.write_image(folder / "frame0.png", frames[0])
    media.write_image(folder / "frame1.png", frames[1])
    media.write_image(folder / "frame1.jpg", frames[2])
    with pytest.raises(media.MediaError, match="frame1.jpg and frame1.png .* share the name 'frame1'") as err:
        media.read_video(folder)
    assert "\n" not in str(err.value)


def png_header(width: int, height: int) -> bytes:
    """A PNG that says it is ``width x height`` (no pixel data): what PIL reads before decoding anything."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_a_huge_image_is_one_line_that_says_how_to_go_beyond(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(png_header(15000, 13000))
    with pytest.raises(media.MediaError) as err:
        media.read_image(big)
    message = str(err.value)
    assert "15000x13000 (195 megapixels)" in message and "over the 100 megapixels" in message
    assert "--max-megapixels 196" in message and "\n" not in message
    with pytest.raises(media.MediaError, match="corrupt or truncated"):  # past the limit: on to decoding
        media.read_image(big, max_megapixels=200)
    with pytest.raises(media.MediaError, match="195 megapixels"):
        media.read_frames(big, "--source")


def add_audio(video, track):
    from csd_nerf.media.audio import add_audio

    return add_audio(video, track)


def test_a_video_keeps_its_sound(tmp_path):
    source = tmp_path / "talk.mp4"
    run_ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000",
        "-t", "2", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(source),
    )  # fmt: skip
    video = media.read_video(source)
    assert video.audio is not None and video.audio.codec == "aac"
    out = media.write_video(tmp_path / "edited.mp4", video)
    assert add_audio(out, video.audio) is None
    with av.open(str(out)) as result, av.open(str(source)) as original:
        assert len(result.streams.audio) == 1
        got = [bytes(p) for p in result.demux(audio=0) if p.size]
        expected = [bytes(p) for p in original.demux(audio=0) if p.size]
    assert got == expected  # copied as it was
    assert len(media.read_video(out).frames) == 20


def test_sound_mp4_cannot_hold_is_re_encoded(tmp_path):
    source = tmp_path / "talk.avi"
    run_ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000",
        "-t", "2", "-c:v", "mjpeg", "-c:a", "pcm_s16le", str(source),
    )  # fmt: skip
    video = media.read_video(source)
    out = media.write_video(tmp_path / "edited.mp4", video)
    assert add_audio(out, video.audio) is None
    with av.open(str(out)) as result:
        stream = result.streams.audio[0]
        assert stream.codec_context.name == "aac"
        seconds = sum(frame.samples for frame in result.decode(stream)) / stream.rate
    assert seconds == pytest.approx(2.0, abs=0.15)  # AAC adds a priming frame and pads the last one


def test_sound_that_cannot_be_kept_is_said(tmp_path, monkeypatch):
    source = tmp_path / "talk.mp4"
    run_ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000",
        "-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(source),
    )  # fmt: skip
    video = media.read_video(source)
    out = media.write_video(tmp_path / "edited.mp4", video)

    def broken(*args, **kwargs):  # what PyAV raises when MP4 cannot take a stream
        av.error.err_check(-errno.EINVAL)

    monkeypatch.setattr("csd_nerf.media.audio._copy", broken)
    notice = add_audio(out, video.audio)
    assert notice and "audio track (aac) of talk.mp4 could not be kept" in notice and "no sound" in notice
    assert len(media.read_video(out).frames) == 10  # the pictures are still there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.mp4", "talk.mp4"]


def test_a_full_disk_names_the_file_that_could_not_be_written(tmp_path, monkeypatch):
    def full(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(media.MediaError) as err:
        media.write_image(tmp_path / "edited.png", pattern(1)[0])
    assert str(err.value).startswith(f"cannot write {tmp_path / 'edited.png'} (No space left on device)")


def test_a_gif_without_frame_delays_keeps_every_frame(tmp_path):
    import imageio.v3 as iio

    frames = pattern(6)
    iio.imwrite(tmp_path / "plain.gif", frames)  # GIF87a: no delays (ffmpeg's demuxer merged them into one frame)
    video = media.read_video(tmp_path / "plain.gif")
    assert video.frames.shape == frames.shape and video.fps == 10
    assert len(media.read_frames(tmp_path / "plain.gif")) == 6


def test_a_palette_image_with_a_transparent_colour_keeps_it(tmp_path):
    palette = Image.new("P", (16, 8), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (8, 0, 16, 8))
    palette.save(tmp_path / "p.png", transparency=1)  # colour 1 (blue, the right half) is transparent
    rgb, alpha = media.read_image_alpha(tmp_path / "p.png")
    assert (rgb[:, :8] == (255, 0, 0)).all()
    assert alpha is not None and (alpha[:, :8] == 255).all() and (alpha[:, 8:] == 0).all()
