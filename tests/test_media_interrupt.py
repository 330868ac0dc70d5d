"""SIGTERM and Ctrl-C stop ``csd-edit-2d`` cleanly: a real process, a real signal, in the middle of a run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from csd_nerf.media import io as media

REPO = Path(__file__).resolve().parents[1]


def _image(tmp_path: Path) -> Path:
    path = tmp_path / "pano.png"
    ramp = np.linspace(0, 255, 96)[None, :, None]
    media.write_image(path, np.broadcast_to(ramp, (64, 96, 3)).astype(np.uint8))
    return path


def _start(tmp_path: Path, *extra: str) -> subprocess.Popen:
    args = ["panorama", "--input", str(_image(tmp_path)), "--output", str(tmp_path / "out"), "--prompt", "paint it"]
    args += ["--ip2p-model", "tiny", "--steps", "100000", "--quiet", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-m", "csd_nerf.media.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _when(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended first: {process.communicate()[1]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the run never got there")
        time.sleep(0.1)


def _staging(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def _finish(process: subprocess.Popen, sig: int) -> tuple[int, str]:
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_sigterm_mid_edit_cleans_up_and_says_so_in_one_line(tmp_path):
    process = _start(tmp_path)
    _when(lambda: bool(_staging(tmp_path)), process)  # the edit has started writing its staging folder
    time.sleep(1.0)
    code, err = _finish(process, signal.SIGTERM)
    lines = err.strip().splitlines()
    assert code == 128 + signal.SIGTERM, err
    assert re.fullmatch(
        r"csd-edit-2d: interrupted \(SIGTERM\) (at step \d+ of 100000|before the first step): nothing written",
        lines[-1],
    ), err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() and _staging(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_sigterm_with_save_every_keeps_the_saved_results(tmp_path):
    process = _start(tmp_path, "--save-every", "2")
    # step 4 exists: step 2 is complete
    _when(lambda: any((p / "steps" / "step_00004.png").exists() for p in _staging(tmp_path)), process)
    code, err = _finish(process, signal.SIGTERM)
    out = tmp_path / "out"
    assert code == 128 + signal.SIGTERM, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("csd-edit-2d: interrupted (SIGTERM) at step ")
    assert last.endswith(f": the results saved every 2 steps are kept in {out / 'steps'}"), err
    record = json.loads((out / "run.json").read_text())
    assert record["status"].startswith("interrupted at step ")
    assert record["output"]["files"][:2] == ["steps/step_00002.png", "steps/step_00004.png"]
    for name in record["output"]["files"]:
        assert media.read_image(out / name).shape == (64, 96, 3)  # every kept result is whole
    assert _staging(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_ctrl_c_mid_edit_exits_130(tmp_path):
    process = _start(tmp_path)
    _when(lambda: bool(_staging(tmp_path)), process)
    time.sleep(1.0)
    code, err = _finish(process, signal.SIGINT)
    assert code == 130, err
    assert err.strip().splitlines()[-1].startswith("csd-edit-2d: interrupted (Ctrl-C) "), err
    assert not (tmp_path / "out").exists() and _staging(tmp_path) == []
