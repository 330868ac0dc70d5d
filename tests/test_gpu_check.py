"""The GPU check's rehearsal, fast parts (scripts/gpu_check.sh, scripts/gpu/): offline, on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GPU = REPO / "scripts" / "gpu"
sys.path.insert(0, str(GPU))

import bundle  # noqa: E402
import check  # noqa: E402
import fence  # noqa: E402
import machine  # noqa: E402
import profiles  # noqa: E402
from stage_core import pick_winner  # noqa: E402
from stage_nerf import usable_args  # noqa: E402


def _plan(tmp: Path, name: str, code: str) -> check.Plan:
    """A stage plan that runs ``code`` with RECORD (its record file) and DEADLINE defined."""
    record = tmp / f"{name}.json"

    def argv(deadline: float) -> list[str]:
        return [sys.executable, "-c", f"RECORD = {str(record)!r}; DEADLINE = {deadline}\n{code}"]

    return check.Plan(name, argv, record, tmp / f"{name}.log")


def test_failure_and_time_box_are_recorded_and_the_next_stage_runs(tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    profile = {
        "stages": {
            "fails": {"cap_s": 30, "floor_s": 1},
            "hangs": {"cap_s": 2, "floor_s": 1},
            "works": {"cap_s": 30, "floor_s": 1},
        }
    }
    plans = [
        _plan(tmp_path, "fails", "raise SystemExit('boom: the stage crashed')"),
        # writes partial figures, starts a child in its process group, then hangs past its time box
        _plan(
            tmp_path,
            "hangs",
            "import json, subprocess, time\n"
            "json.dump({'status': 'running', 'partial': 1}, open(RECORD, 'w'))\n"
            f"p = subprocess.Popen(['sleep', '60']); open({str(child_pid)!r}, 'w').write(str(p.pid))\n"
            "time.sleep(60)",
        ),
        _plan(tmp_path, "works", "import json; json.dump({'status': 'ok', 'answer': 42}, open(RECORD, 'w'))"),
    ]
    jsonl = tmp_path / "gpu_check.jsonl"
    start = time.monotonic()
    records = check.run_plans(plans, profile, time.time() + 120, jsonl, dict(os.environ))
    assert time.monotonic() - start < 25

    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [line["stage"] for line in lines] == ["fails", "hangs", "works"] == [r["stage"] for r in records]
    fails, hangs, works = lines
    assert fails["status"] == "failed" and "boom" in fails["reason"]
    assert hangs["status"] == "failed" and "timed out" in hangs["reason"] and hangs["partial"] == 1
    assert hangs["seconds"] < 10 and hangs["timeout_s"] == 2
    assert works == {**works, "status": "ok", "answer": 42}
    for line in lines:
        assert {"stage", "status", "seconds"} <= set(line)
    # the time box killed the stage's whole process group, its child too
    pid = int(child_pid.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_stage_without_time_left_is_skipped(tmp_path: Path) -> None:
    profile = {"stages": {"late": {"cap_s": 30, "floor_s": 10}}}
    plan = _plan(tmp_path, "late", "raise SystemExit(1)")
    (record,) = check.run_plans([plan], profile, time.time() + 5, tmp_path / "l.jsonl", dict(os.environ))
    assert record["status"] == "skipped" and "no time left" in record["reason"] and not plan.log.exists()


def test_plan_timeout_keeps_the_floors_of_later_stages() -> None:
    profile = profiles.GPU
    order = list(profiles.ORDER)
    later = sum(profile["stages"][s]["floor_s"] for s in order[1:])
    assert profiles.plan_timeout("core", profile, order, 1000) == profile["stages"]["core"]["cap_s"]
    assert profiles.plan_timeout("core", profile, order, later + 20) == 20
    assert profiles.plan_timeout("splat", profile, order, 30) == 30
    assert sum(s["floor_s"] for s in profile["stages"].values()) < profile["deadline_s"] <= 8 * 60


def test_rehearsal_runs_a_stage_and_writes_json_lines(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--rehearse", "--profile", "smoke", "--stages", "core", "--offline", "--skip-py312", "--no-overlay"]
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), *args, "--output", str(out), "--work", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]
    assert [line["stage"] for line in lines] == ["setup", "core"]
    setup, core = lines
    assert setup["import_errors"] == {}, setup["import_errors"]  # behind the fence: only what the machine will have
    if setup["install"]["csd_nerf"]["ok"]:  # needs setuptools>=77: the bundle's, or the venv's
        assert setup["csd_nerf_from"] == str(tmp_path / "w" / "site")
    assert core["status"] == "ok", core
    step = core["steps"][0]
    assert step["n_particles"] == 1 and step["unet_evals_per_particle"] == 5 and step["step_ms"] > 0
    assert "channels_last" in core["speedups"]["rows"] and core["speedups"]["winner"]
    assert (out / "summary.md").read_text().startswith("== setup")
    assert (out / "logs.tar.gz").is_file()


def test_fence_hides_what_the_machine_lacks(tmp_path: Path) -> None:
    """Behind the fence a package the machine lacks is not importable, not found and not listed."""
    (tmp_path / "sitecustomize.py").write_text((GPU / "fence.py").read_text())
    config = tmp_path / "fence.json"
    config.write_text(json.dumps({"allowed": sorted(machine.PACKAGES), "log": str(tmp_path / "hidden.txt")}))
    code = (
        "import importlib.util, importlib.metadata, json\n"
        "try:\n    import tyro; imported = True\nexcept ModuleNotFoundError:\n    imported = False\n"
        "try:\n    importlib.metadata.version('tyro'); listed = True\n"
        "except importlib.metadata.PackageNotFoundError:\n    listed = False\n"
        "import torch\n"
        "print(json.dumps([imported, importlib.util.find_spec('tyro') is not None, listed]))"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), fence.ENV: str(config)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == [False, False, False]
    assert "tyro" in (tmp_path / "hidden.txt").read_text().split()


def _fake_wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        meta += [f"Requires-Dist: {r}" for r in requires]
        archive.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(meta) + "\n")
        archive.writestr(
            f"{name}-{version}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(f"{name}-{version}.dist-info/RECORD", "")
        archive.writestr(f"{name}/__init__.py", "")
    return path


def test_bundle_folder_and_requirement_checks(tmp_path: Path) -> None:
    pins = [bundle.Pin("alpha_pkg", "1.0"), bundle.Pin("beta", "2.0")]
    _fake_wheel(
        tmp_path, "alpha_pkg", "1.0", ["beta>=2", "numpy<2", "torch>=2.1", "nowhere-pkg", "ham; python_version<'3'"]
    )
    assert bundle.check_folder(tmp_path, pins) == ["missing beta==2.0"]
    _fake_wheel(tmp_path, "beta", "2.0", [])
    _fake_wheel(tmp_path, "beta", "1.0", [])
    _fake_wheel(tmp_path, "stray", "0.1", [])
    problems = bundle.check_folder(tmp_path, pins)
    assert any("beta: want exactly 2.0" in p for p in problems) and any("stray" in p for p in problems)
    assert sorted(bundle.prune(tmp_path, pins)) == ["beta-1.0-py3-none-any.whl", "stray-0.1-py3-none-any.whl"]
    assert bundle.check_folder(tmp_path, pins) == []

    site = tmp_path / "site"
    assert bundle.install_wheels(sys.executable, sorted(tmp_path.glob("*.whl")), site)["ok"]
    report = bundle.verify_requirements(site)
    assert report["requirements"] == 4  # the python_version<'3' marker does not apply to 3.12
    assert any("alpha-pkg needs numpy<2, machine has" in p for p in report["problems"])
    assert any("nowhere-pkg" in p and "neither in the bundle nor on the machine" in p for p in report["problems"])
    assert not report["ok"]


def test_bundle_pins_are_one_version_each_and_not_on_the_machine() -> None:
    pins = bundle.read_pins()
    keys = [p.key for p in pins]
    assert len(keys) == len(set(keys))
    assert not {p.key for p in pins if not p.build} & machine.PACKAGES  # a build pin may shadow the machine's
    assert {"diffusers", "nerfstudio", "gsplat", "nerfacc", "tyro", "viser"} <= set(keys)


def test_winner_needs_a_clear_margin_over_noise() -> None:
    rows = {"channels_last": {"step_ms": 90.0, "first_step_ms": 95.0}, "compile": {"step_ms": 99.0}}
    clear = pick_winner([100.0, 101.0], rows)
    assert clear["winner"] == "channels_last" and clear["clear"] and "channels_last" in clear["adoption"]
    noisy = pick_winner([100.0, 120.0], rows)
    assert noisy["winner"] == "default" and noisy["fastest"] == "channels_last" and not noisy["clear"]


def test_unknown_flags_are_dropped_with_their_values() -> None:
    kept, dropped = usable_args(["--preset", "gpu", "--gone", "1", "2", "--out", "x"], {"--preset", "--out"})
    assert kept == ["--preset", "gpu", "--out", "x"] and dropped == ["--gone"]


@pytest.mark.parametrize("name", sorted(profiles.PROFILES))
def test_profiles_cover_every_stage(name: str) -> None:
    profile = profiles.PROFILES[name]
    assert set(profile["stages"]) == set(profiles.ORDER)
    for stage in profile["stages"].values():
        assert stage["floor_s"] <= stage["cap_s"]
