"""The one reader of sequences (csd-edit-2d and csd-eval): folders, videos, single images, one-line errors."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from csd_nerf.eval.errors import EvalInputError
from csd_nerf.eval.frames import check_pair, resize_frames
from csd_nerf.media.io import MediaError
from csd_nerf.media.io import read_frames as load_frames


def _frames(n: int = 4, h: int = 24, w: int = 32) -> np.ndarray:
    # Flat colours survive lossy video codecs well enough to check frame order.
    out = np.zeros((n, h, w, 3), np.uint8)
    for k in range(n):
        out[k] = (20 + 230 * k // max(n - 1, 1), 220 - 200 * k // max(n - 1, 1), 90)  # distinct, in 0..255
    return out


def test_folder_is_read_in_natural_order_and_ignores_other_files(tmp_path):
    frames = _frames(12)
    for k, f in enumerate(frames):
        iio.imwrite(tmp_path / f"frame_{k}.png", f)  # frame_10 must come after frame_9, not after frame_1
    (tmp_path / "notes.txt").write_text("not a frame")
    got = load_frames(tmp_path)
    assert got.shape == (12, 24, 32, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, frames)


def test_gif_mp4_and_single_image(tmp_path):
    frames = _frames(5)
    iio.imwrite(tmp_path / "clip.gif", frames)
    iio.imwrite(tmp_path / "clip.mp4", frames, fps=5)
    iio.imwrite(tmp_path / "one.png", frames[2])
    gif = load_frames(tmp_path / "clip.gif")
    assert gif.shape == (5, 24, 32, 3)
    assert np.abs(gif.astype(int) - frames).max() <= 8  # gif palette quantisation
    mp4 = load_frames(tmp_path / "clip.mp4")
    assert mp4.shape[0] == 5 and mp4.shape[-1] == 3
    assert np.abs(mp4.astype(float).mean(axis=(1, 2)) - frames.astype(float).mean(axis=(1, 2))).max() < 12
    np.testing.assert_array_equal(load_frames(tmp_path / "one.png"), frames[2:3])


def test_grayscale_and_rgba_become_rgb(tmp_path):
    gray = np.arange(24 * 32, dtype=np.uint8).reshape(24, 32)
    rgba = np.dstack([_frames(1)[0], np.full((24, 32), 7, np.uint8)])
    iio.imwrite(tmp_path / "a_gray.png", gray)
    iio.imwrite(tmp_path / "b_rgba.png", rgba)
    got = load_frames(tmp_path)
    assert got.shape == (2, 24, 32, 3)
    np.testing.assert_array_equal(got[0], np.repeat(gray[..., None], 3, axis=-1))
    np.testing.assert_array_equal(got[1], rgba[..., :3])


def test_missing_empty_unsupported_and_mixed_sizes(tmp_path):
    with pytest.raises(MediaError, match="--edited .*nope does not exist"):
        load_frames(tmp_path / "nope", "--edited")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MediaError, match="holds no frames"):
        load_frames(empty)
    (tmp_path / "x.npz").write_bytes(b"")
    with pytest.raises(MediaError, match="unsupported file type"):
        load_frames(tmp_path / "x.npz")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    iio.imwrite(mixed / "0.png", _frames(1)[0])
    iio.imwrite(mixed / "1.png", _frames(1, 16, 16)[0])
    with pytest.raises(MediaError, match="1.png is 16x16 but 0.png is 32x24") as err:
        load_frames(mixed)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("broken.png", b"not a png", "broken.png: not a readable image"),
        ("cut.png", None, "cut.png: .*corrupt or truncated"),
        ("empty.png", b"", "empty.png: the file is empty"),
        ("empty.mp4", b"", "empty.mp4: the file is empty"),
        ("junk.mp4", b"\x00\x01 not a video at all" * 40, "junk.mp4: .*corrupt, truncated or not a video"),
    ],
)
def test_unreadable_files_say_what_is_wrong_with_which_file_in_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:  # a real PNG cut short
        iio.imwrite(path, np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)
    with pytest.raises(MediaError, match=message) as err:
        load_frames(path, "--source")
    text = str(err.value)
    assert "\n" not in text and len(text) < 400 and "ffmpeg version" not in text


def test_check_pair_and_resize():
    a = _frames(4)
    check_pair(a, a.copy())
    with pytest.raises(EvalInputError, match="4 frame.* but --edited has 3"):
        check_pair(a, a[:3])
    big = _frames(4, 48, 64)
    with pytest.raises(EvalInputError, match="32x24 but --edited frames are 64x48.*--resize-edited"):
        check_pair(a, big)
    resized = resize_frames(big, 24, 32)
    check_pair(a, resized)
    np.testing.assert_allclose(resized.astype(float), a.astype(float), atol=2)  # flat colours resize to themselves
