"""Particles spread over processes: one step's gradients with 2 gloo processes on a CPU equal those of one process
with the same views, timestep and noise (the kernel over all particles, each rank backpropagating its own, the
gradients summed once)."""

from __future__ import annotations

import pytest
import torch
from distributed_workers import (
    in_one_process,
    nerfacto_step,
    panorama_step,
    run_ranks,
    splat_step,
    video_step,
    viewer_change,
)

pytestmark = pytest.mark.usefixtures("tiny_guidance")  # the tiny model is generated once, before the workers load it


RELATIVE = 1e-4
"""Bound on ``|g_k - g_1| / |g_1|`` (norms): the UNet and renders run on batches of another size in each process,
which changes float32 rounding only (observed: at most 6.0e-06, nerfacto direct and deferred, splats, video, panorama)."""


def _close(actual: torch.Tensor, expected: torch.Tensor, name: str = "") -> None:
    error = float((actual.double() - expected.double()).norm() / expected.double().norm().clamp(min=1e-30))
    assert error <= RELATIVE, f"{name}: relative error {error:.2e}"
    assert float(expected.abs().max()) > 0 or float(actual.abs().max()) == 0, name


def _same_on_every_rank(results: list[dict], key: str) -> None:
    for other in results[1:]:
        assert other[key] == results[0][key], key


def test_a_video_step_over_two_processes_equals_one_process(tmp_path):
    one = in_one_process(video_step, 4)
    two = run_ranks(video_step, 2, tmp_path, 4)
    _same_on_every_rank(two, "ids")
    _same_on_every_rank(two, "timestep")
    assert two[0]["ids"] == one["ids"] and two[0]["timestep"] == one["timestep"]
    for result in two:  # every rank holds the summed gradient of all frames
        _close(result["grad"], one["grad"])


def test_a_panorama_step_over_two_processes_equals_one_process(tmp_path):
    """Overlapping windows are averaged over all the step's windows, not each process's own."""
    one = in_one_process(panorama_step, 4)
    two = run_ranks(panorama_step, 2, tmp_path, 4)
    for result in two:
        _close(result["grad"], one["grad"])


@pytest.mark.parametrize("backprop", ["direct", "deferred"])
def test_a_nerfacto_step_over_two_processes_equals_one_process(source, tmp_path, backprop):
    """Every field and proposal-network gradient, regularisers and preservation included (each process weighs its
    view-averaged terms by its share of the views)."""
    one = in_one_process(nerfacto_step, str(source), backprop, 4)
    two = run_ranks(nerfacto_step, 2, tmp_path, str(source), backprop, 4)
    assert set(two[0]["grads"]) == set(one["grads"]) and len(one["grads"]) > 5
    for result in two:
        for name, grad in one["grads"].items():
            _close(result["grads"][name], grad, name)


def test_a_splat_step_over_two_processes_equals_one_process(base, tmp_path):
    from nerf_fixtures import splat_source_run

    source = splat_source_run(base)
    one = in_one_process(splat_step, str(source), 4)
    two = run_ranks(splat_step, 2, tmp_path, str(source), 4)
    for result in two:
        for name, grad in one["grads"].items():
            _close(result["grads"][name], grad, name)


def test_a_viewer_change_on_rank_0_reaches_every_process_at_the_next_step(source, tmp_path):
    results = run_ranks(viewer_change, 2, tmp_path, str(source))
    for result in results:
        assert result == {"prompt": "Make it snowy", "guidance_scale": 10.0, "box": (0.1, 0.2, 0.3)}, results


def test_fewer_views_than_processes_is_one_line(tmp_path):
    with pytest.raises(Exception, match="cannot be spread over 2 processes"):
        run_ranks(video_step, 2, tmp_path, 1)


def test_csd_edit_2d_under_torchrun_writes_what_one_process_does(tmp_path):
    """``torchrun --nproc-per-node 2 csd-edit-2d video ...``: each process takes two of the four frames of every
    step, rank 0 writes; the frames equal a one-process run's within one level of 255 (float rounding; observed 1)
    and differ from the input (a real edit, observed ~70 levels on average)."""
    import os
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((32, 48, 3)) * 255).astype(np.uint8)).save(frames / f"f{i}.png")
    args = ["video", "--input", str(frames), "--prompt", "x", "--ip2p-model", "tiny", "--steps", "3"]
    args += ["--num-particles", "4", "--quiet", "--device", "cpu"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "csd_nerf.media.cli", *args, "--output", str(tmp_path / "one")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "csd_nerf.media.cli", *args]
        + ["--output", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.strip().splitlines()[-1] == str(tmp_path / "two")  # rank 0 alone prints the folder
    for i in range(4):
        a, b, source = (
            np.asarray(Image.open(folder / f"f{i}.png")).astype(int)
            for folder in (tmp_path / "one" / "edited", tmp_path / "two" / "edited", frames)
        )
        assert np.abs(a - b).max() <= 1
        assert np.abs(b - source).mean() > 20


def test_under_torchrun_only_rank_0_speaks(tmp_path, monkeypatch, capsys):
    """Bad input is found by every process alike and said once; a signal that reaches every process (torchrun
    forwards it) is said by rank 0 alone, even when it comes while the processes are still meeting."""
    import os
    import subprocess
    import sys

    import csd_nerf.media.cli as cli
    from csd_nerf.media.cli import main

    frames = tmp_path / "frames"
    frames.mkdir()
    args = ["video", "--input", str(frames), "--prompt", " ", "--ip2p-model", "tiny", "--device", "cpu"]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "csd_nerf.media.cli", *args]
        + ["--output", str(tmp_path / "out")],
        capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=600,
    )  # fmt: skip
    assert two.returncode != 0
    assert two.stderr.count("csd-edit-2d: error:") == 1, two.stderr[-3000:]
    assert not (tmp_path / "out").exists()

    def signal_during_rendezvous(device):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "join", signal_during_rendezvous)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, said in (("1", ""), ("0", "csd-edit-2d: interrupted (Ctrl-C) before the edit: nothing written\n")):
        monkeypatch.setenv("RANK", rank)
        frames_ok = ["video", "--input", str(frames), "--prompt", "x", "--ip2p-model", "tiny", "--device", "cpu"]
        assert main([*frames_ok, "--output", str(tmp_path / f"rank{rank}")]) == 130
        assert capsys.readouterr().err == said
