"""``ns-train csd-edit --machine.num-devices 2`` on a CPU: two gloo processes edit one scene, end with identical
parameters and one checkpoint that stock ns-render loads; a signal stops both at one step; what cannot be spread
is refused in one line before anything is written.

The step's gradients with k processes equal one process's in tests/test_distributed.py; here the whole run."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from nerf_fixtures import BIN, CPU, QUIET, run_tool, single_run, source_run, splat_source_run, tool_env, video_frames

from csd_nerf.nerf.compat import load_checkpoint
from csd_nerf.nerf.source import model_state_from_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TWO = ["--machine.num-devices", "2"]


def _edit_args(method: str, source: Path, folder: Path, steps: int, *extra: str) -> list[str]:
    args = [method, "--load-dir", str(source / "nerfstudio_models"), "--output-dir", str(folder / "outputs")]
    args += ["--max-num-iterations", str(steps), "--pipeline.prompt", "Turn the ball blue"]
    args += ["--pipeline.ip2p-model", "tiny", "--pipeline.num-particles", "2", "--pipeline.render-resolution", "16"]
    machine = CPU if method == "csd-edit" else ["--machine.device-type", "cpu"]
    return args + [*extra] + machine + QUIET + TWO


def test_two_processes_end_with_identical_parameters_and_one_checkpoint(base, tmp_path):
    """nerfacto, deferred backpropagation (direct, and splats, are compared step by step in test_distributed.py)."""
    method, source = "csd-edit", source_run(base)
    backprop = ["--pipeline.backprop", "deferred"]
    proc = run_tool(["ns-train", *_edit_args(method, source, tmp_path, 4, *backprop)], base, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "Traceback" not in output
    words = " ".join(output.split())  # rich wraps long lines
    assert "csd-edit: 2 processes (cpu), 2 views per step shared among them" in words
    assert "(1/1 in each of 2 processes)" in words
    agreed = [line for line in output.splitlines() if "processes ended with identical parameters" in line]
    assert len(agreed) == 1, output[-4000:]  # rank 0 compared both ranks' digests
    assert "parameters differ" not in output
    run = single_run(tmp_path / "outputs", method)  # one run folder: the processes did not claim their own
    checkpoints = sorted((run / "nerfstudio_models").glob("*.ckpt"))
    assert [c.name for c in checkpoints] == ["step-000000003.ckpt"], checkpoints
    state = model_state_from_checkpoint(load_checkpoint(checkpoints[0]))
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert len(list((run / "previews").glob("*.png"))) == 1  # rank 0 alone writes previews
    video = tmp_path / "edit.mp4"
    render = ["ns-render", "interpolate", "--load-config", str(run / "config.yml"), "--output-path", str(video)]
    proc = run_tool(render + ["--interpolation-steps", "2", "--frame-rate", "4"], base, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(video_frames(video)) >= 2


def test_sigterm_stops_both_processes_at_one_step_with_one_checkpoint(base, tmp_path):
    args = _edit_args("csd-edit", source_run(base), tmp_path, 500, "--pipeline.preview-every", "1")
    proc = subprocess.Popen(
        [str(BIN / "ns-train"), *args, "--steps-per-save", "400"],
        cwd=tmp_path,
        env=tool_env(base),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 400
        while not list(tmp_path.glob("outputs/*/csd-edit/*/previews/step-000003.png")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # to the launching process only: it passes it on
        _, stderr = proc.communicate(timeout=180)
    finally:
        proc.kill()
    stderr = stderr.decode()
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("csd-edit") and "interrupted" in line]
    assert len(lines) == 1 and "(SIGTERM) after" in lines[0], stderr[-3000:]
    saved = Path(lines[0].split("saved ", 1)[1])
    assert saved.is_file() and int(saved.stem.split("-")[1]) >= 3
    assert len(list(saved.parent.glob("*.ckpt"))) == 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"pipeline.num_particles": 1}, "--pipeline.num-particles 1 views cannot be spread over 2 processes"),
        ({"pipeline.mode": "idu"}, "--pipeline.mode idu runs in one process"),
        ({"machine.num_machines": 2}, "pass --machine.num-machines 1"),
        ({"pipeline.ip2p_device": "cpu"}, "drop --pipeline.ip2p-device"),
        ({"machine.device_type": "cuda"}, "CUDA devices are visible"),
    ],
)
def test_what_cannot_be_spread_is_refused(change, message, monkeypatch):
    import copy

    from csd_nerf.errors import SettingError
    from csd_nerf.method_configs.csd_edit import csd_edit_method
    from csd_nerf.nerf.launch import check_devices

    config = copy.deepcopy(csd_edit_method.config)
    config.machine.num_devices, config.machine.device_type = 2, "cpu"
    config.pipeline.num_particles = 4
    check_devices(config)  # the defaults spread
    for path, value in change.items():
        owner, name = path.split(".")
        setattr(getattr(config, owner), name, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # the CUDA case alike on any machine
    with pytest.raises(SettingError, match=re.escape(message)):
        check_devices(config)


def test_splat_densification_over_two_processes_is_one_line_before_anything_is_written(base, tmp_path):
    source = splat_source_run(base)
    args = ["ns-train", *_edit_args("csd-edit-splat", source, tmp_path, 2), "--pipeline.model.densify", "True"]
    proc = run_tool(args, base, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("csd-edit: error:")]
    assert len(lines) == 1 and "splats cannot be densified over several processes" in lines[0], proc.stderr[-3000:]
    assert not (tmp_path / "outputs").exists()
