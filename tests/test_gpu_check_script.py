"""``scripts/gpu_check.sh --rehearse`` on quick stages: its JSON lines, a stage stopped by its time limit, a stage
skipped when the budget is spent, and the logs it keeps."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def gpu_check(out: Path, *args: str) -> tuple[int, list[dict]]:
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--rehearse", "--output", str(out), *args], capture_output=True, text=True, timeout=600
    )
    lines = (out / "gpu_check.jsonl").read_text().splitlines()
    return proc.returncode, [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> tuple[Path, int, list[dict]]:
    out = tmp_path_factory.mktemp("gpu_check")
    rc, lines = gpu_check(out, "--stages", "bench_step gsplat_build no_such_stage")
    return out, rc, lines


def test_rehearsal_writes_one_line_per_stage_with_figures(rehearsal):
    out, rc, lines = rehearsal
    assert rc == 0
    assert [line["stage"] for line in lines] == ["setup", "bench_step", "gsplat_build", "no_such_stage"]
    assert all({"stage", "status", "seconds"} <= set(line) for line in lines)
    setup, step, build, unknown = lines
    assert setup["status"] == "ok" and setup["rehearsal"] is True and setup["cuda"] is False
    assert step["status"] == "ok"
    assert [row["n_particles"] for row in step["rows"]] == [1, 2]
    assert all(row["unet_evals_per_particle"] == 5 and row["preset"] == "tiny" for row in step["rows"])
    assert build["status"] == "skipped" and "CUDA" in build["reason"]
    assert unknown["status"] == "skipped" and unknown["reason"] == "unknown stage"
    with tarfile.open(out / "logs.tar.gz") as logs:
        assert "logs/bench_step.log" in logs.getnames()
    assert not (out / "logs").exists()


def test_a_stage_past_its_limit_is_recorded_as_timeout_and_the_next_one_still_runs(rehearsal):
    out = rehearsal[0]
    before = len((out / "gpu_check.jsonl").read_text().splitlines())
    rc, lines = gpu_check(out, "--stages", "bench_step gsplat_build", "--timeout-s", "1")
    assert rc == 1
    new = lines[before:]  # appended after the first run's lines
    assert [line["stage"] for line in new] == ["setup", "bench_step", "gsplat_build"]
    assert new[1]["status"] == "timeout" and new[1]["reason"] == "stopped after 1 s" and new[1]["rows"] == []
    assert new[2]["status"] == "skipped"


def test_stages_beyond_the_budget_are_skipped(tmp_path):
    rc, lines = gpu_check(tmp_path, "--stages", "bench_2d", "--budget-s", "0")
    assert rc == 0
    assert lines[-1]["stage"] == "bench_2d" and lines[-1]["status"] == "skipped"
    assert "no time left" in lines[-1]["reason"]
