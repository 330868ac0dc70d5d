"""``csd-eval`` end to end with the miniature CLIP: JSON and PNG out, one-line errors, LPIPS fallbacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

import csd_nerf.eval.lpips as lpips_mod
from csd_nerf.eval.cli import default_output, main
from csd_nerf.eval.clip import load_clip
from csd_nerf.eval.evaluate import evaluate
from csd_nerf.eval.tiny_clip import TINY_CLIP_WARNING

REPO = Path(__file__).resolve().parents[1]
F, H, W = 6, 40, 48


def _sequence(shift: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    frames = []
    for k in range(F):
        img = np.stack([(x * 5 + 10 * k) % 256, (y * 6) % 256, np.full_like(x, 60 + shift)], axis=-1)
        frames.append(img.astype(np.uint8))
    return np.stack(frames)


@pytest.fixture()
def pair(tmp_path):
    src, edit = tmp_path / "src", tmp_path / "edit"
    src.mkdir()
    edit.mkdir()
    for k, (a, b) in enumerate(zip(_sequence(), _sequence(shift=150), strict=True)):
        iio.imwrite(src / f"{k:03d}.png", a)
        iio.imwrite(edit / f"{k:03d}.png", b)
    return src, edit


def _args(src, edit, *extra: str) -> list[str]:
    base = ["--source", str(src), "--edited", str(edit), "--source-caption", "a photo", "--target-caption"]
    return [*base, "a blue photo", "--clip-model", "tiny", "--device", "cpu", "--quiet", *extra]


def test_round_trip_writes_json_and_png(pair, tmp_path, capsys):
    src, edit = pair
    out = tmp_path / "res" / "eval.json"
    assert main(_args(src, edit, "--no-lpips", "--output", str(out))) == 0
    data = json.loads(out.read_text())  # strict JSON: Python's parser would accept NaN, so check the text too
    assert "NaN" not in out.read_text() and "Infinity" not in out.read_text()
    assert data["meaningless"] is True and TINY_CLIP_WARNING in data["warnings"]
    assert data["model"]["name"] == "tiny" and data["model"]["meaningless"] is True
    assert data["inputs"]["num_frames"] == F and (data["inputs"]["height"], data["inputs"]["width"]) == (H, W)
    assert torch.__version__.startswith(data["versions"]["torch"])
    assert data["versions"]["transformers"] and data["versions"]["python"]
    m = data["metrics"]
    for key in ("clip_directional_similarity", "clip_image_similarity", "psnr"):
        assert len(m[key]["per_frame"]) == F and m[key]["available"]
        assert m[key]["mean"] == pytest.approx(np.mean(m[key]["per_frame"]))
        assert data["means"][key] == m[key]["mean"]
    for key in ("clip_direction_consistency", "clip_image_consistency"):
        assert len(m[key]["per_frame"]) == F - 1 and m[key]["pairing"] == "consecutive"
    assert all(-1.0 <= v <= 1.0 for v in m["clip_directional_similarity"]["per_frame"])
    assert m["lpips"]["available"] is False and m["lpips"]["reason"] == "disabled with --no-lpips"
    # PSNR of a constant +150 offset on the blue channel: mse = 150^2 / 3 over 255^2
    assert m["psnr"]["mean"] == pytest.approx(10 * np.log10(3 * 255**2 / 150**2), abs=1e-6)

    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        assert im.width > 300 and im.height > 300
    assert capsys.readouterr().err.count("meaningless") == 1  # the tiny warning reaches the user once


def test_cli_json_matches_the_python_api(pair, tmp_path):
    src, edit = pair
    out = tmp_path / "eval.json"
    assert main(_args(src, edit, "--no-lpips", "--output", str(out))) == 0
    from csd_nerf.media.io import read_frames as load_frames

    result = evaluate(load_frames(src), load_frames(edit), "a photo", "a blue photo", load_clip("tiny", "cpu"))
    data = json.loads(out.read_text())
    assert set(data["means"]) == set(result.means())
    for key, value in result.means().items():
        if value is None:
            assert data["means"][key] is None, key
        else:
            assert data["means"][key] == pytest.approx(value), key


def test_identical_sequences_give_nulls_not_crashes(pair, tmp_path):
    src, _ = pair
    out = tmp_path / "same.json"
    assert main(_args(src, src, "--no-lpips", "--output", str(out))) == 0
    data = json.loads(out.read_text())
    m = data["metrics"]
    assert m["clip_directional_similarity"]["per_frame"] == [None] * F
    assert m["clip_directional_similarity"]["mean"] is None and m["clip_directional_similarity"]["undefined"] == F
    assert m["psnr"]["per_frame"] == [None] * F  # infinite
    assert m["clip_image_similarity"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert any("no CLIP change" in w for w in data["warnings"])
    with Image.open(out.with_suffix(".png")) as plot:
        plot.load()
        assert plot.width > 300


def test_video_input_single_image_and_default_output(tmp_path):
    seq = _sequence()
    iio.imwrite(tmp_path / "src.gif", seq)
    iio.imwrite(tmp_path / "edit.gif", _sequence(shift=100))
    assert main(_args(tmp_path / "src.gif", tmp_path / "edit.gif", "--no-lpips")) == 0
    assert json.loads((tmp_path / "edit_eval.json").read_text())["inputs"]["num_frames"] == F
    with Image.open(tmp_path / "edit_eval.png") as plot:
        plot.load()
    assert default_output(tmp_path) == tmp_path.parent / f"{tmp_path.name}_eval.json"  # never inside a frame folder

    iio.imwrite(tmp_path / "a.png", seq[0])
    iio.imwrite(tmp_path / "b.png", _sequence(shift=100)[0])
    out = tmp_path / "single.json"
    assert main(_args(tmp_path / "a.png", tmp_path / "b.png", "--no-lpips", "--output", str(out))) == 0
    data = json.loads(out.read_text())
    assert data["metrics"]["clip_image_consistency"]["per_frame"] == []
    assert len(data["metrics"]["psnr"]["per_frame"]) == 1


def test_lpips_unavailable_is_reported_not_raised(pair, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lpips_mod, "load_lpips", lambda device: (None, "no weights here (test)"))
    src, edit = pair
    out = tmp_path / "eval.json"
    assert main(_args(src, edit, "--output", str(out))) == 0
    data = json.loads(out.read_text())
    for key in ("lpips", "lpips_consecutive"):
        entry = data["metrics"][key]
        assert entry["available"] is False and entry["mean"] is None and entry["per_frame"] is None
        assert entry["reason"] == "no weights here (test)"
    assert "LPIPS unavailable: no weights here (test)" in capsys.readouterr().err


def test_load_lpips_turns_a_download_failure_into_a_reason(monkeypatch):
    import urllib.error

    import torchmetrics.image.lpip as tm_lpip

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tm_lpip, "LearnedPerceptualImagePatchSimilarity", offline)
    scorer, reason = lpips_mod.load_lpips(torch.device("cpu"))
    assert scorer is None and "URLError" in reason and "--no-lpips" in reason and "\n" not in reason


def test_lpips_values_are_plumbed_per_frame_and_per_pair(pair):
    from csd_nerf.media.io import read_frames as load_frames

    src, edit = load_frames(pair[0]), load_frames(pair[1])

    def mean_abs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # stands in for LPIPS: same signature
        return (a - b).abs().flatten(1).mean(1).double()

    r = evaluate(src, edit, "a photo", "a blue photo", load_clip("tiny", "cpu"), lpips=mean_abs)
    s, e = torch.from_numpy(src).double() / 255, torch.from_numpy(edit).double() / 255
    expected_src = (e - s).abs().flatten(1).mean(1)
    expected_pairs = (e[:-1] - e[1:]).abs().flatten(1).mean(1)
    torch.testing.assert_close(r.metrics["lpips"].values, expected_src, atol=1e-6, rtol=0)
    torch.testing.assert_close(r.metrics["lpips_consecutive"].values, expected_pairs, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda s, e: (s, e / "000.png"), "6 frame(s) but --edited has 1"),
        (lambda s, e: (s, e.parent / "missing"), "missing does not exist"),
        (lambda s, e: (s.parent / "big", e), "--source frames are 96x80 but --edited frames are 48x40"),
    ],
    ids=["count", "missing", "size"],
)
def test_input_errors_are_one_line_and_exit_2(pair, tmp_path, capsys, mutate, expected):
    src, edit = pair
    big = tmp_path / "big"
    big.mkdir()
    for k in range(F):
        iio.imwrite(big / f"{k}.png", np.zeros((80, 96, 3), np.uint8))
    s, e = mutate(src, edit)
    assert main(_args(s, e, "--no-lpips", "--output", str(tmp_path / "x.json"))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("csd-eval: error:") and expected in err and "\n" not in err
    assert not (tmp_path / "x.json").exists()


def test_an_existing_result_is_refused_without_overwrite_and_a_foreign_file_always(pair, tmp_path, capsys):
    src, edit = pair
    out = tmp_path / "eval.json"
    assert main(_args(src, edit, "--no-lpips", "--output", str(out))) == 0
    first = out.read_text()
    assert main(_args(src, edit, "--no-lpips", "--output", str(out))) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err and out.read_text() == first
    assert main(_args(src, edit, "--no-lpips", "--output", str(out), "--overwrite")) == 0

    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    assert main(_args(src, edit, "--no-lpips", "--output", str(notes), "--overwrite")) == 2
    assert "not a csd-eval result" in capsys.readouterr().err and notes.read_text() == '{"mine": true}'


def test_an_unwritable_output_fails_before_any_work(pair, tmp_path, capsys, monkeypatch):
    import csd_nerf.eval.clip as clip_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded when the output cannot be written")

    monkeypatch.setattr(clip_module, "load_clip", no_model)
    src, edit = pair
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(_args(src, edit, "--no-lpips", "--output", str(blocker / "eval.json"))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("csd-eval: error: cannot write --output") and "\n" not in err


def test_a_write_failure_after_the_work_is_one_line(pair, tmp_path, capsys, monkeypatch):
    import csd_nerf.eval.report as report

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_json", full_disk)
    src, edit = pair
    assert main(_args(src, edit, "--no-lpips", "--output", str(tmp_path / "eval.json"))) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the tiny model's warning
    assert err.startswith(f"csd-eval: error: cannot write {tmp_path / 'eval.json'} (No space left on device)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edit", "src"]  # no plot without its JSON


def test_a_failed_plot_is_named_and_leaves_no_half_result(pair, tmp_path, capsys, monkeypatch):
    import errno

    import matplotlib.figure

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    src, edit = pair
    out = tmp_path / "e.json"
    assert main(_args(src, edit, "--no-lpips", "--output", str(out))) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"csd-eval: error: cannot write {tmp_path / 'e.png'} (No space left on device)"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edit", "src"]  # neither file, no temporary one


@pytest.mark.parametrize("flag", ["--source-caption", "--target-caption"])
def test_a_caption_that_is_not_utf8_is_one_line_before_loading_anything(pair, capsys, monkeypatch, flag):
    import csd_nerf.eval.clip as clip_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded for an unusable caption")

    monkeypatch.setattr(clip_module, "load_clip", no_model)
    src, edit = pair
    args = _args(src, edit, "--no-lpips")
    args[args.index(flag) + 1] = b"a \xff photo".decode(
        "utf-8", "surrogateescape"
    )  # the shell's bytes, as Python has them
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"csd-eval: error: {flag} is not valid UTF-8") and "\n" not in err
    assert "Traceback" not in err


def test_a_huge_frame_is_one_line_that_says_how_to_go_beyond(pair, tmp_path, capsys):
    from test_media_files import png_header

    src, _ = pair
    big = tmp_path / "big.png"
    big.write_bytes(png_header(15000, 13000))
    assert main(_args(big, src / "000.png", "--no-lpips", "--output", str(tmp_path / "x.json"))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("csd-eval: error: --source") and "195 megapixels" in err and "--max-megapixels" in err
    assert "\n" not in err and not (tmp_path / "x.json").exists()


def test_sigterm_while_writing_leaves_no_result_and_one_line(pair, tmp_path):
    import signal
    import time

    src, edit = pair
    out = tmp_path / "res" / "eval.json"
    script = (
        "import sys, time\n"
        "import csd_nerf.eval.report as report\n"
        "def slow_plot(result, path):\n"
        "    open(path, 'wb').write(b'half a plot')\n"
        "    print('writing', file=sys.stderr, flush=True)\n"
        "    time.sleep(600)\n"
        "report.plot_per_frame = slow_plot\n"
        "from csd_nerf.eval.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = _args(src, edit, "--no-lpips", "--output", str(out))
    process = subprocess.Popen(
        [sys.executable, "-c", script, *args], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 180
    while not (out.parent.exists() and any(out.parent.iterdir())):  # the plot is being written
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == "csd-eval: interrupted (SIGTERM): nothing written"
    assert "Traceback" not in err and list(out.parent.iterdir()) == []


def test_lpips_with_stand_in_alexnet_weights_is_unavailable(tmp_path, monkeypatch):
    from csd_nerf.testing.offline import ALEXNET_FILE, torch_home_for_offline_nerfacto

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))  # no real weights to copy: a stand-in is written
    home, real = torch_home_for_offline_nerfacto(tmp_path / "tools")
    assert not real and (home / "hub" / "checkpoints" / ALEXNET_FILE).is_file()
    monkeypatch.setenv("TORCH_HOME", str(home))
    scorer, reason = lpips_mod.load_lpips(torch.device("cpu"))
    assert scorer is None and "not torchvision's" in reason and "--no-lpips" in reason and "\n" not in reason


def test_weights_are_checked_against_the_hash_in_their_name(tmp_path):
    import hashlib

    content = b"some weights"
    digest = hashlib.sha256(content).hexdigest()[:8]
    good, bad = tmp_path / f"net-{digest}.pth", tmp_path / "net-00000000.pth"
    good.write_bytes(content)
    bad.write_bytes(content)
    assert lpips_mod.matches_its_hash(good) and not lpips_mod.matches_its_hash(bad)


def test_a_zero_byte_video_is_one_short_line(pair, tmp_path, capsys):
    src, _ = pair
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert main(_args(src, tmp_path / "empty.mp4", "--no-lpips", "--output", str(tmp_path / "x.json"))) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"csd-eval: error: cannot read video {tmp_path / 'empty.mp4'}: the file is empty"


def test_size_mismatch_can_be_resampled(pair, tmp_path):
    src, _ = pair
    big = tmp_path / "big"
    big.mkdir()
    for k, f in enumerate(_sequence(shift=50)):
        iio.imwrite(big / f"{k}.png", np.asarray(Image.fromarray(f).resize((2 * W, 2 * H))))
    out = tmp_path / "r.json"
    assert main(_args(src, big, "--no-lpips", "--resize-edited", "--output", str(out))) == 0
    assert json.loads(out.read_text())["inputs"]["resized_edited"] is True


@pytest.mark.parametrize(("flag", "value"), [("--source-caption", "  "), ("--target-caption", "")])
def test_empty_captions_fail_before_loading_anything(pair, capsys, flag, value):
    src, edit = pair
    args = _args(src, edit, "--no-lpips", "--clip-model", "/no/such/model")
    args[args.index(flag) + 1] = value
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "caption is empty" in err and "\n" not in err


def test_identical_captions_are_rejected(pair, capsys):
    src, edit = pair
    args = _args(src, edit, "--no-lpips")
    args[args.index("--target-caption") + 1] = "a photo"
    assert main(args) == 2
    assert "identical" in capsys.readouterr().err


def test_unloadable_model_prints_one_line_without_traceback(pair, tmp_path):
    # A real process: the promise is about what the user sees on the terminal, and the exit status.
    src, edit = pair
    args = _args(
        src, edit, "--no-lpips", "--clip-model", str(tmp_path / "no_clip_here"), "--output", str(tmp_path / "o.json")
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "csd_nerf.eval", *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("csd-eval: error: cannot load CLIP model") and "Fix:" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_lpips_scorer_with_a_random_backbone(monkeypatch):
    # Real torchmetrics LPIPS code with a randomly initialised AlexNet (no download): checks our batching and shapes.
    import torchmetrics.functional.image.lpips as tm_functional

    original = tm_functional._get_tv_model_features
    monkeypatch.setattr(tm_functional, "_get_tv_model_features", lambda net, pretrained=False: original(net, False))
    scorer, reason = lpips_mod.load_lpips(torch.device("cpu"), batch_size=2)
    assert reason is None and scorer is not None
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(5, 3, 64, 64, generator=gen), torch.rand(5, 3, 64, 64, generator=gen)
    same = scorer(a, a)
    assert same.shape == (5,) and torch.allclose(same, torch.zeros(5, dtype=torch.float64), atol=1e-6)
    diff = scorer(a, b)
    assert diff.shape == (5,) and (diff > 0).all()
    one_by_one = torch.cat([scorer(a[i : i + 1], b[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(diff, one_by_one, atol=1e-6, rtol=1e-5)  # batch splits must not mix frames
    assert scorer(a[:0], b[:0]).numel() == 0  # one frame has no consecutive pairs
