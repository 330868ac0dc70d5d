"""The GPU check in one command (issue 11): set up, then run each stage time-boxed, one JSON line per stage.

    bash scripts/gpu_check.sh --output DIR              # on the GPU machine
    bash scripts/gpu_check.sh --rehearse --output DIR   # on a CPU: tiny sizes, the bundle built and rehearsed

``DIR`` receives ``gpu_check.jsonl`` (a ``setup`` line, then one line per stage: ``stage``, ``status`` = ok / failed
/ skipped, ``reason``, ``seconds``, the figures), ``summary.md`` and ``logs.tar.gz``. Scratch files (the installed
bundle, stage logs, gsplat's build) go to ``--work``. Only the standard library is imported here: on the GPU
machine nothing else is installed yet when this starts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bundle
import machine
import profiles
import summary
import timebox

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PYTHON312 = "/root/.pyenv/versions/3.12.1/bin/python3.12"
"""The rehearsal's stand-in for the machine's Python 3.12 (no torch: it only installs and compiles the bundle)."""
# Imported at setup, in the stages' environment: the first place a missing package or a version clash shows.
IMPORTS = (
    "torch",
    "diffusers",
    "transformers",
    "nerfacc",
    "gsplat",
    "nerfstudio.models.nerfacto",
    "nerfstudio.pipelines.base_pipeline",
    "nerfstudio.data.datamanagers.base_datamanager",
    "nerfstudio.models.splatfacto",
    "csd_nerf.editor",
    "csd_nerf.nerf.pipeline",
    "csd_nerf.method_configs.csd_edit",
    "csd_nerf.nerf.rasterize",
)


@dataclass
class Plan:
    """One time-boxed step: its name (a key of the profile's stages), command, record file and log."""

    name: str
    argv: Callable[[float], list[str]]
    """The command, given the epoch by which the stage must have written its record."""
    record: Path
    log: Path


def log(message: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def append(jsonl: Path, record: dict) -> None:
    with jsonl.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def stage_record(plan: Plan, outcome: timebox.Outcome, timeout: float) -> dict:
    """The stage's line: its own record, corrected for how its process ended."""
    try:
        record = json.loads(plan.record.read_text())
    except (OSError, json.JSONDecodeError):
        record = {"status": "running"}
    if outcome.timed_out:
        record["status"] = "failed"
        record["reason"] = f"timed out after {outcome.seconds:.0f} s (time box {timeout:.0f} s); figures are partial"
    elif record.get("status") in (None, "running"):
        last = outcome.log_tail.splitlines()[-1] if outcome.log_tail else "no output"
        record["status"] = "failed"
        record["reason"] = f"the stage process exited {outcome.returncode} before finishing: {last[:300]}"
    return {"stage": plan.name, **record, "seconds": outcome.seconds, "timeout_s": round(timeout, 1)}


def run_plans(plans: list[Plan], profile: dict, deadline: float, jsonl: Path, env: dict) -> list[dict]:
    """Run the plans in order, each within its time box; a failure or a timeout is recorded and the next runs."""
    names = [p.name for p in plans]
    records = []
    for plan in plans:
        timeout = profiles.plan_timeout(plan.name, profile, names, deadline - time.time())
        floor = profile["stages"][plan.name]["floor_s"]
        if timeout < floor:
            record = {"stage": plan.name, "status": "skipped", "seconds": 0.0}
            record["reason"] = f"no time left: {timeout:.0f} s available, the stage needs at least {floor:.0f} s"
        else:
            log(f"{plan.name}: up to {timeout:.0f} s")
            plan.record.parent.mkdir(parents=True, exist_ok=True)
            plan.record.unlink(missing_ok=True)
            stage_deadline = time.time() + timeout - 3.0  # the stage saves before the kill
            outcome = timebox.run(plan.argv(stage_deadline), timeout, plan.log, env=env, cwd=REPO)
            record = stage_record(plan, outcome, timeout)
        append(jsonl, record)
        records.append(record)
        log(f"{plan.name}: {record['status']} in {record['seconds']:.0f} s" + _why(record))
    return records


def _why(record: dict) -> str:
    return f" ({record['reason'][:200]})" if record.get("reason") else ""


def stage_plan(name: str, params: dict, work: Path) -> Plan:
    """The standard plan of a stage of ``stage.py``."""
    params_file = work / "params" / f"{name}.json"
    params_file.parent.mkdir(parents=True, exist_ok=True)
    params_file.write_text(json.dumps(params))
    record = work / "records" / f"{name}.json"

    def argv(deadline: float) -> list[str]:
        return [
            sys.executable,
            str(HERE / "stage.py"),
            name,
            *("--params", str(params_file), "--record", str(record)),
            *("--deadline", f"{deadline:.1f}", "--work", str(work / "stages" / name)),
        ]

    return Plan(name, argv, record, work / "logs" / f"{name}.log")


# --------------------------------------------------------------------------------------------------------------------
# setup


def _run_python(
    python: str, code: str, args: tuple[str, ...] = (), env: dict | None = None, cwd: Path | None = None
) -> dict:
    """Run ``python -c code args`` that prints one JSON object; that object, or the error.

    ``cwd``: not the repository, whose csd_nerf/ would shadow the installed copy (``-c`` puts the cwd first on the path).
    """
    timeout = 180
    try:
        done = subprocess.run(
            [python, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(lines[-1])


FACTS_CODE = r"""
import importlib, json, os, platform, sys, warnings
warnings.filterwarnings("ignore")
facts = {"python": platform.python_version(), "cpus": os.cpu_count()}
errors = {}
for name in sys.argv[1:]:
    try:
        module = importlib.import_module(name)
        if "." not in name:
            facts[name] = getattr(module, "__version__", "?")
    except Exception as error:
        errors[name] = f"{type(error).__name__}: {error}"[:300]
facts["import_errors"] = errors
try:
    import numpy, torch
    facts["numpy"] = numpy.__version__
    facts["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        facts["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    import csd_nerf
    facts["csd_nerf_from"] = os.path.dirname(os.path.dirname(csd_nerf.__file__))
except Exception as error:
    errors["facts"] = str(error)[:300]
print(json.dumps(facts))
"""


EXTENSIONS = Path("/tmp/csd_gpu_check_torch_extensions")
"""torch's JIT builds (gsplat): outside ``--work``, which each run clears, so a rerun on a warm machine reuses them."""


def stage_environment(pythonpath: list[Path], work: Path) -> dict:
    """The stages' environment: offline hub, the scratch site first on the path, a shared extensions folder."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(str(p) for p in pythonpath),
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        MPLBACKEND="Agg",
        TORCH_EXTENSIONS_DIR=str(EXTENSIONS),
    )
    return env


BUNDLE_SITE = Path("/tmp/csd_gpu_check_bundle")
"""The installed bundle on the GPU machine: outside ``--work`` so that a rerun reuses it (and gsplat's build)."""


def install_here(python: str, work: Path, tag: str, pins: list[bundle.Pin], wheels: bool) -> tuple[list[Path], dict]:
    """Install the bundle (if ``wheels``) and csd-nerf into fresh scratch targets for ``python``: the targets, the
    one holding csd-nerf first, and the outcome."""
    site, build = work / f"site{tag}", work / f"build{tag}"
    for folder in (site, build):
        shutil.rmtree(folder, ignore_errors=True)
    result: dict = {}
    targets = [site]
    if wheels:
        result = bundle.install_bundle(python, bundle.WHEEL_DIR, site, build, pins)
    else:  # the CPU venv has the bundle's packages; only setuptools is needed, to build csd-nerf
        build_keys = {p.key for p in pins if p.build}
        build_wheels = [w for w in bundle.WHEEL_DIR.glob("*.whl") if bundle.wheel_key(w)[0] in build_keys]
        result["build"] = bundle.install_wheels(python, build_wheels, build) if build_wheels else {"ok": True}
    result["csd_nerf"] = bundle.install_repo(python, site, build)
    result["ok"] = all(v.get("ok", True) for v in result.values() if isinstance(v, dict))
    return targets, result


def setup_gpu(work: Path, rec: dict) -> dict:
    """Install the carried wheels (once per bundle) and csd-nerf (every run) into scratch targets; check the
    requirements, Python's headers and the imports."""
    pins = bundle.read_pins()
    rec["bundle_problems"] = bundle.check_folder(bundle.WHEEL_DIR, pins)
    build = Path(f"{BUNDLE_SITE}_build")
    rec["install"] = {"bundle": bundle.install_bundle_once(sys.executable, bundle.WHEEL_DIR, BUNDLE_SITE, build, pins)}
    site = work / "site"
    rec["install"]["csd_nerf"] = bundle.install_repo(sys.executable, site, build)
    rec["install"]["ok"] = rec["install"]["bundle"]["ok"] and rec["install"]["csd_nerf"]["ok"]
    rec["requirements"] = bundle.verify_requirements(site, BUNDLE_SITE)
    rec["headers"] = bundle.ensure_headers(sys.executable, bundle.WHEEL_DIR, work)
    # without csd-nerf installed it runs from the source tree (no csd_nerf.method_configs, no entry points)
    path = [site, BUNDLE_SITE] if rec["install"]["csd_nerf"]["ok"] else [BUNDLE_SITE, REPO]
    return stage_environment(path, work)


def _overlay(offline: bool) -> tuple[Path | None, str]:
    """A cached target holding the machine's versions of transformers, huggingface_hub, tokenizers and numpy."""
    pins = {machine.normalise(name): version for name, version in machine.REHEARSAL_OVERLAY.items()}
    wanted = "\n".join(f"{name}=={version}" for name, version in sorted(pins.items()))
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "csd_nerf_gpu_check"
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    site, wheels, stamp = cache / f"overlay-{tag}", cache / f"wheels-{tag}", cache / f"overlay-{tag}.pins"
    if stamp.is_file() and stamp.read_text() == wanted:
        return site, "cached"
    present = {bundle.wheel_key(w): w for w in wheels.glob("*.whl")}
    missing = [f"{name}=={version}" for name, version in sorted(pins.items()) if (name, version) not in present]
    if missing:
        if offline:
            return None, f"not cached and --offline: {', '.join(missing)}"
        args = ["download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels), *missing]
        download = bundle.pip(sys.executable, args)
        if not download["ok"]:
            return None, f"download failed: {download['error']}"
        present = {bundle.wheel_key(w): w for w in wheels.glob("*.whl")}
    shutil.rmtree(site, ignore_errors=True)
    installed = bundle.install_wheels(sys.executable, [present[key] for key in sorted(pins.items())], site)
    if not installed["ok"]:
        return None, f"install failed: {installed['error']}"
    stamp.write_text(wanted)
    return site, "installed"


def _machine_closure() -> set[str]:
    """The machine's packages and, as installed here, everything they require (transitively, no extras).

    A machine package's requirements are on the machine by definition; here its version may differ and need other
    names (huggingface_hub 2 needs httpx2), which must not be fenced off.
    """
    import importlib.metadata
    import re

    closure, todo = set(), list(machine.PACKAGES)
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            if "extra ==" in line.replace('"', "").replace("'", ""):
                continue
            match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
            if match:
                todo.append(machine.normalise(match.group(0)))
    return closure


def _fence(work: Path, pins: list[bundle.Pin]) -> Path:
    """A folder whose sitecustomize.py hides what the GPU machine will not have."""
    folder = work / "fence"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(HERE / "fence.py", folder / "sitecustomize.py")
    allowed = sorted(_machine_closure() | {p.key for p in pins if not p.build} | {"csd-nerf"})
    (folder / "fence.json").write_text(json.dumps({"allowed": allowed, "log": str(work / "fence_blocked.txt")}))
    return folder


def _cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "csd_nerf_gpu_check"


def _numpy312(python312: str, offline: bool) -> tuple[Path | None, str]:
    """A cached target with numpy 2 for Python 3.12 (not carried: the machine has numpy 2), to import the binaries."""
    version = machine.REHEARSAL_OVERLAY["numpy"]
    site, wheels = _cache() / f"numpy-{version}-py312", _cache() / "wheels-py312"
    if (site / "numpy").is_dir():
        return site, "cached"
    if not any(wheels.glob(f"numpy-{version}-*.whl")):
        if offline:
            return None, "numpy for Python 3.12 not cached and --offline"
        tags = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312"]
        tags += [arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64") for arg in ("--platform", tag)]
        got = bundle.pip(
            sys.executable,
            ["download", "-q", "--no-deps", "--only-binary=:all:", *tags, "-d", str(wheels), f"numpy=={version}"],
        )
        if not got["ok"]:
            return None, f"numpy download failed: {got['error']}"
    installed = bundle.install_wheels(python312, sorted(wheels.glob(f"numpy-{version}-*.whl")), site)
    return (site, "installed") if installed["ok"] else (None, f"numpy install failed: {installed['error']}")


def rehearse_py312(python312: str, work: Path, pins: list[bundle.Pin], offline: bool) -> dict:
    """Install the bundle and csd-nerf for Python 3.12 as the machine will, check requirements, compile, import."""
    if not Path(python312).is_file():
        return {"ok": False, "error": f"{python312} not found"}
    (site,), result = install_here(python312, work, "312", pins, wheels=True)
    result["requirements"] = bundle.verify_requirements(site)
    compiled = subprocess.run([python312, "-m", "compileall", "-q", str(site)], capture_output=True, text=True)
    result["compileall"] = _outcome(compiled, compiled.stdout)
    # The bundle's cp312 binaries against numpy 2 (3.12 here has no torch, so nothing that needs it is imported).
    numpy_site, how = _numpy312(python312, offline)
    modules = ["msgspec", "websockets.speedups"] + (["numpy", "rawpy", "fpsample"] if numpy_site else [])
    path = os.pathsep.join(str(p) for p in (site, numpy_site) if p)
    code = f"import {', '.join(modules)}"
    binaries = subprocess.run(
        [python312, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path}
    )
    result["binary_imports"] = {"modules": modules, "numpy": how, **_outcome(binaries, binaries.stderr)}
    result["ok"] = all(v.get("ok", True) for v in result.values() if isinstance(v, dict))
    return result


def _outcome(done: subprocess.CompletedProcess, text: str) -> dict:
    return {"ok": done.returncode == 0, **({"error": text.strip()[-300:]} if done.returncode else {})}


def setup_rehearse(args: argparse.Namespace, work: Path, rec: dict) -> dict:
    """Build or check the bundle and its size, rehearse its install for 3.12, and fence this venv like the machine."""
    pins = bundle.read_pins()
    problems = bundle.check_folder(bundle.WHEEL_DIR, pins)
    if problems and not args.offline:
        log("building the wheel bundle (scripts/make_wheel_bundle.sh)")
        made = subprocess.run(["bash", str(REPO / "scripts" / "make_wheel_bundle.sh")], capture_output=True, text=True)
        rec["bundle_built"] = made.returncode == 0
        problems = bundle.check_folder(bundle.WHEEL_DIR, pins)
    rec["bundle_problems"] = problems
    rec["travel"] = bundle.travel_bytes()
    if not problems and not args.skip_py312:
        log("rehearsing the install for Python 3.12")
        rec["py312"] = rehearse_py312(args.python312, work, pins, args.offline)
    path, rec["install"] = install_here(sys.executable, work, "", pins, wheels=False)
    if not args.no_overlay:
        overlay, how = _overlay(args.offline)
        rec["overlay"] = {"versions": machine.REHEARSAL_OVERLAY, "status": how}
        if overlay is not None:
            path.insert(0, overlay)
    if not args.no_fence:
        path.insert(0, _fence(work, pins))
    env = stage_environment(path, work)
    if not args.no_fence:
        env["CSD_GPU_CHECK_FENCE"] = str(work / "fence" / "fence.json")
    return env


def start_gsplat_build(work: Path, env: dict, capability: str | None) -> subprocess.Popen:
    """gsplat's first-use CUDA compile in the background, niced, so that it overlaps the GPU stages.

    ``capability`` (e.g. "9.0") becomes TORCH_CUDA_ARCH_LIST: one architecture, and no CUDA context in the compiler.
    """
    build_env = {**env, "MAX_JOBS": str(max(4, (os.cpu_count() or 8) - 4))}
    if capability:
        build_env["TORCH_CUDA_ARCH_LIST"] = capability
    log_file = (work / "logs" / "gsplat_build.log").open("ab")
    return subprocess.Popen(
        ["nice", "-n", "10", sys.executable, str(HERE / "gsplat_build.py"), str(work / "gsplat_build.json")],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=build_env,
        cwd=REPO,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        timebox.kill_group(proc, grace_s=2.0)


def pack_logs(work: Path, out: Path) -> None:
    """Logs and raw records in one archive (the device call returns at most 8 files)."""
    with tarfile.open(out / "logs.tar.gz", "w:gz") as archive:
        for pattern in ("logs/*.log", "records/*.json", "stages/*/*.log", "stages/*/*.jsonl", "*.json", "*.txt"):
            for path in sorted(work.glob(pattern)):
                archive.add(path, arcname=str(path.relative_to(work)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="gpu_check.jsonl, summary.md, logs.tar.gz")
    parser.add_argument("--rehearse", action="store_true", help="the same stages at tiny sizes on this CPU")
    parser.add_argument("--profile", choices=sorted(profiles.PROFILES), help="default: gpu, or rehearse")
    parser.add_argument("--stages", default=",".join(profiles.ORDER), help="comma-separated, in this order")
    parser.add_argument("--work", type=Path, default=Path("/tmp/csd_gpu_check"), help="scratch folder")
    parser.add_argument("--deadline-s", type=float, help="whole check, setup included (default: the profile's)")
    parser.add_argument("--offline", action="store_true", help="rehearsal: download nothing")
    parser.add_argument("--no-fence", action="store_true", help="rehearsal: do not hide what the machine lacks")
    parser.add_argument("--no-overlay", action="store_true", help="rehearsal: not with the machine's versions")
    parser.add_argument("--skip-py312", action="store_true", help="rehearsal: no Python 3.12 install rehearsal")
    parser.add_argument("--python312", default=PYTHON312)
    args = parser.parse_args(argv)
    args.profile = args.profile or ("rehearse" if args.rehearse else "gpu")
    args.stages = [s for s in args.stages.split(",") if s]
    unknown = set(args.stages) - set(profiles.ORDER)
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(sorted(unknown))}: use {', '.join(profiles.ORDER)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.time()
    profile = profiles.PROFILES[args.profile]
    deadline = start + (args.deadline_s or profile["deadline_s"])
    out, work = args.output.resolve(), args.work.resolve()
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    jsonl = out / "gpu_check.jsonl"
    jsonl.write_text("")
    rec: dict = {"stage": "setup", "mode": "rehearse" if args.rehearse else "gpu", "profile": args.profile}
    rec["stages"] = args.stages
    log(f"setup ({rec['mode']}, profile {args.profile})")
    builder = None
    try:
        try:
            env = setup_rehearse(args, work, rec) if args.rehearse else setup_gpu(work, rec)
        except Exception as error:  # recorded; the stages still run from the source tree and say what fails
            rec["error"] = f"setup broke: {type(error).__name__}: {error}"[:500]
            env = stage_environment([REPO], work)
        rec.update(_run_python(sys.executable, FACTS_CODE, IMPORTS, env=env, cwd=work))
        if "splat" in args.stages and not args.rehearse:
            builder = start_gsplat_build(work, env, rec.get("capability"))
        rec["status"], rec["reason"] = _setup_status(rec)
        rec["seconds"] = round(time.time() - start, 1)
        append(jsonl, rec)
        log(f"setup: {rec['status']} in {rec['seconds']:.0f} s" + _why(rec))

        plans = []
        for name in args.stages:
            params = dict(profile["stages"][name])
            if name == "splat":
                if builder is not None:
                    params["build_record"] = str(work / "gsplat_build.json")
                else:
                    params["build_skip_reason"] = "rehearsal: gsplat's CUDA build runs only on the GPU machine"
            plans.append(stage_plan(name, params, work))
        run_plans(plans, profile, deadline, jsonl, env)
    finally:
        stop(builder)
        if (work / "fence_blocked.txt").is_file():
            blocked = sorted(set((work / "fence_blocked.txt").read_text().split()))
            log(f"fence: hidden modules the code looked for: {', '.join(blocked) or 'none'}")
        pack_logs(work, out)
    text = summary.summarise(summary.read_records(jsonl))
    (out / "summary.md").write_text(text + "\n")
    print(text, flush=True)
    log(f"done in {time.time() - start:.0f} s; records in {jsonl}")
    return 0


def _setup_status(rec: dict) -> tuple[str, str | None]:
    problems = list(rec.get("bundle_problems", []))
    for key in ("install", "py312"):
        if key in rec and not rec[key].get("ok", True):
            problems.append(f"{key} failed: {json.dumps(rec[key])[:200]}")
    if "requirements" in rec and not rec["requirements"]["ok"]:
        problems += rec["requirements"]["problems"]
    if rec.get("py312", {}).get("requirements", {}).get("problems"):
        problems += rec["py312"]["requirements"]["problems"]
    if "travel" in rec and not rec["travel"]["fits"]:
        problems.append(
            f"{rec['travel']['total_mib']} MiB would travel, over the {rec['travel']['limit_mib']} MiB limit"
        )
    problems += [f"import {k}: {v}" for k, v in rec.get("import_errors", {}).items()]
    if "error" in rec:
        problems.append(rec["error"])
    return ("failed", "; ".join(problems)[:600]) if problems else ("ok", None)


if __name__ == "__main__":
    sys.exit(main())
