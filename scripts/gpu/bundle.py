"""The wheel bundle: its pins, the ``.whl/`` folder, what travels, installing it into a scratch target, and
checking that every requirement its packages declare is met there (bundle, machine, or knowingly left out)."""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import machine

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PINS_FILE = HERE / "bundle.txt"
WHEEL_DIR = REPO / ".whl"
HEADERS_ARCHIVE = "python3.12-include.tar.gz"
"""CPython 3.12 headers, carried in case the machine's Python lacks them: gsplat's JIT build needs Python.h."""


@dataclass(frozen=True)
class Pin:
    """One wheel of the bundle: ``name==version``; ``build`` wheels only serve to install csd-nerf itself."""

    name: str
    version: str
    build: bool = False

    @property
    def key(self) -> str:
        return machine.normalise(self.name)


def read_pins(path: Path = PINS_FILE) -> list[Pin]:
    """Pins from ``bundle.txt`` (``name==version [build]``, ``#`` comments)."""
    pins = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].split()
        if not line:
            continue
        name, sep, version = line[0].partition("==")
        if not sep or not version:
            raise ValueError(f"{path}: {raw.strip()!r} is not name==version")
        pins.append(Pin(name, version, build="build" in line[1:]))
    return pins


def wheel_key(path: Path) -> tuple[str, str]:
    """(normalised name, version) of a wheel from its file name (PEP 427)."""
    parts = path.name[: -len(".whl")].split("-")
    return machine.normalise(parts[0]), parts[1]


def check_folder(folder: Path, pins: list[Pin]) -> list[str]:
    """Problems with the wheel folder: a pin without its wheel, two versions of one package, a stray wheel."""
    if not folder.is_dir():
        return [f"{folder} does not exist: run scripts/make_wheel_bundle.sh"]
    found: dict[str, list[tuple[str, str]]] = {}
    for wheel in sorted(folder.glob("*.whl")):
        name, version = wheel_key(wheel)
        found.setdefault(name, []).append((version, wheel.name))
    problems = []
    wanted = {pin.key: pin for pin in pins}
    for key, pin in wanted.items():
        versions = [v for v, _ in found.get(key, [])]
        if not versions:
            problems.append(f"missing {pin.name}=={pin.version}")
        elif versions != [pin.version]:
            problems.append(f"{pin.name}: want exactly {pin.version}, found {', '.join(versions)}")
    for key, wheels in found.items():
        if key not in wanted:
            problems.append(f"stray wheel(s) not in bundle.txt: {', '.join(w for _, w in wheels)}")
    return problems


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


_NOT_SOURCES = {"__pycache__", "build", "outputs", "demo_out", "data", "node_modules"}


def _checkout_files(repo: Path) -> list[str]:
    """Tracked and untracked-not-ignored files of the checkout (what a device call sends), relative paths.

    Without git (or outside a git checkout) every file outside hidden folders and build outputs.
    """
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo, capture_output=True, check=True
        ).stdout.split(b"\0")
        names = [os.fsdecode(name) for name in listed if name]
    except (OSError, subprocess.CalledProcessError):
        names = []
        for folder, dirs, files in os.walk(repo):
            dirs[:] = [
                d for d in dirs if not d.startswith(".") and d not in _NOT_SOURCES and not d.endswith(".egg-info")
            ]
            names += [str((Path(folder) / f).relative_to(repo)) for f in files]
    return [name for name in names if (repo / name).is_file()]


def travel_bytes(repo: Path = REPO, carried: tuple[Path, ...] = (WHEEL_DIR,)) -> dict:
    """Bytes that travel with a device call: tracked and untracked-not-ignored files, shared/, carried paths."""
    tree = sum((repo / name).stat().st_size for name in _checkout_files(repo))
    shared = _tree_bytes(repo / "shared") if (repo / "shared").is_dir() else 0
    carried_bytes = sum(_tree_bytes(p) for p in carried if p.exists())
    total = tree + shared + carried_bytes
    return {
        "tree_mib": round(tree / 2**20, 2),
        "shared_mib": round(shared / 2**20, 2),
        "carried_mib": round(carried_bytes / 2**20, 2),
        "total_mib": round(total / 2**20, 2),
        "limit_mib": machine.TRAVEL_LIMIT_BYTES // 2**20,
        "fits": total <= machine.TRAVEL_LIMIT_BYTES,
    }


def pip(python: str, args: list[str], env: dict | None = None, timeout: float = 300) -> dict:
    """Run ``python -m pip ARGS`` offline; return its outcome (never raises for a failed install)."""
    cmd = [python, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"pip timed out after {timeout:.0f} s"}
    tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
    return {"ok": done.returncode == 0, **({} if done.returncode == 0 else {"error": " | ".join(tail)})}


def install_wheels(python: str, wheels: list[Path], target: Path) -> dict:
    """``pip install --no-index --no-deps --target``: the device README's recipe, never the system site-packages."""
    target.mkdir(parents=True, exist_ok=True)
    args = ["install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade"]
    return pip(python, [*args, "--target", str(target), *map(str, wheels)])


def install_bundle(python: str, folder: Path, site: Path, build_site: Path, pins: list[Pin]) -> dict:
    """Runtime wheels into ``site``, build-only wheels into ``build_site`` (kept off the run path)."""
    build_keys = {p.key for p in pins if p.build}
    wheels = sorted(folder.glob("*.whl"))
    runtime = [w for w in wheels if wheel_key(w)[0] not in build_keys]
    build = [w for w in wheels if wheel_key(w)[0] in build_keys]
    result = {"runtime": install_wheels(python, runtime, site), "runtime_wheels": len(runtime)}
    if build:
        result["build"] = install_wheels(python, build, build_site)
    result["ok"] = result["runtime"]["ok"] and result.get("build", {"ok": True})["ok"]
    return result


def install_bundle_once(python: str, folder: Path, site: Path, build_site: Path, pins: list[Pin]) -> dict:
    """:func:`install_bundle` into fresh targets, skipped when ``site`` already holds exactly these wheels.

    A rerun on a warm machine then keeps the installed files: reinstalling would also restart gsplat's JIT build,
    whose ninja sees the fresh sources as newer than its objects.
    """
    stamp_text = "\n".join([python, *(f"{w.name} {w.stat().st_size}" for w in sorted(folder.glob("*.whl")))])
    stamp = site / ".bundle-stamp"
    if stamp.is_file() and stamp.read_text() == stamp_text:
        return {"ok": True, "reused": str(site)}
    for target in (site, build_site):
        shutil.rmtree(target, ignore_errors=True)
    result = install_bundle(python, folder, site, build_site, pins)
    if result["ok"]:
        stamp.write_text(stamp_text)
    return result


def install_repo(python: str, site: Path, build_site: Path, repo: Path = REPO) -> dict:
    """Install csd-nerf from a copy of the repository's sources into ``site`` (offline, no dependencies).

    An install maps ``method_configs/`` to ``csd_nerf.method_configs`` and registers the nerfstudio entry points;
    running from the source tree alone has neither. A copy keeps setuptools' build files out of the checkout.
    """
    with tempfile.TemporaryDirectory(prefix="csd_nerf_src_") as tmp:
        for name in _checkout_files(repo):  # what travels: whatever pyproject.toml may come to name
            target = Path(tmp) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, target)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(build_site), os.environ.get("PYTHONPATH")])),
        }
        args = ["install", "-q", "--no-index", "--no-deps", "--no-build-isolation", "--no-compile", "--upgrade"]
        return pip(python, [*args, "--target", str(site), tmp], env=env)


def _marker_environment() -> dict[str, str]:
    """The GPU machine's environment for evaluating requirement markers (no extras)."""
    return {
        "python_version": machine.PYTHON_VERSION,
        "python_full_version": machine.PYTHON_FULL_VERSION,
        "implementation_name": "cpython",
        "implementation_version": machine.PYTHON_FULL_VERSION,
        "platform_python_implementation": "CPython",
        "platform_machine": "x86_64",
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_release": "",
        "platform_version": "",
        "extra": "",
    }


def installed_distributions(*sites: Path) -> dict[str, tuple[str, list[str]]]:
    """``{normalised name: (version, Requires-Dist lines)}`` of every distribution installed in ``sites``."""
    found = {}
    for info in sorted(info for site in sites for info in site.glob("*.dist-info")):
        meta = email.parser.Parser().parsestr((info / "METADATA").read_text(encoding="utf-8", errors="replace"))
        found[machine.normalise(meta["Name"])] = (meta["Version"], meta.get_all("Requires-Dist") or [])
    return found


def verify_requirements(*sites: Path) -> dict:
    """Check every Requires-Dist of what is installed in ``sites`` against the bundle and the machine.

    A requirement is met by a distribution in ``sites`` (its version checked), by a package the machine has (its
    version checked where KINDS.md recorded one), or is listed in ``machine.OMITTED`` with the reason it may stay
    behind. Unmet requirements and version conflicts not in ``machine.ACCEPTED_CONFLICTS`` are problems.
    """
    from packaging.requirements import Requirement

    env = _marker_environment()
    dists = installed_distributions(*sites)
    report: dict = {"distributions": len(dists), "requirements": 0, "problems": [], "accepted": [], "omitted": []}
    for dist, (_, requires) in sorted(dists.items()):
        for line in requires:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            report["requirements"] += 1
            key = machine.normalise(req.name)
            where, version = None, None
            if key in dists:
                where, version = "bundle", dists[key][0]
            elif key in machine.PACKAGES:
                where, version = "machine", machine.VERSIONS.get(key)
            if where is None:
                reason = machine.OMITTED.get(dist, {}).get(key)
                if reason:
                    report["omitted"].append(f"{dist} -> {req} ({reason})")
                else:
                    report["problems"].append(f"{dist} needs {req}: neither in the bundle nor on the machine")
                continue
            if version is not None and req.specifier and not req.specifier.contains(version, prereleases=True):
                text = f"{dist} needs {req}, {where} has {version}"
                accepted = machine.ACCEPTED_CONFLICTS.get((dist, key))
                if accepted:
                    report["accepted"].append(f"{text}: {accepted}")
                else:
                    report["problems"].append(text)
    report["ok"] = not report["problems"]
    return report


def ensure_headers(python: str, folder: Path, work: Path) -> dict:
    """Where the machine's Python lacks ``Python.h``, unpack the carried headers and point the compilers at them."""
    include = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['include'])"], capture_output=True, text=True
    ).stdout.strip()
    if include and (Path(include) / "Python.h").is_file():
        return {"python_h": include}
    archive = folder / HEADERS_ARCHIVE
    if not archive.is_file():
        return {"python_h": None, "error": f"no Python.h under {include!r} and no {archive.name} carried"}
    dest = work / "include"
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "xzf", str(archive), "-C", str(dest)], check=True)
    headers = dest / "python3.12"
    for var in ("CPATH", "CPLUS_INCLUDE_PATH"):
        os.environ[var] = os.pathsep.join(filter(None, [str(headers), os.environ.get(var)]))
    return {"python_h": str(headers), "from": archive.name}


def prune(folder: Path, pins: list[Pin]) -> list[str]:
    """Delete wheels that are not exactly pinned (two versions of one package stop the whole install)."""
    wanted = {(p.key, p.version) for p in pins}
    removed = []
    for wheel in sorted(folder.glob("*.whl")):
        if wheel_key(wheel) not in wanted:
            wheel.unlink()
            removed.append(wheel.name)
    return removed


def main(argv: list[str] | None = None) -> int:
    """``bundle.py [check|prune] [--dir .whl]``: the folder's problems and what travels."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("action", nargs="?", choices=("check", "prune"), default="check")
    parser.add_argument("--dir", type=Path, default=WHEEL_DIR)
    args = parser.parse_args(argv)
    pins = read_pins()
    if args.action == "prune":
        for name in prune(args.dir, pins):
            print(f"removed {name} (not pinned in {PINS_FILE.name})")
    problems = check_folder(args.dir, pins)
    for problem in problems:
        print(f"bundle: {problem}", file=sys.stderr)
    print(json.dumps({"wheels": len(list(args.dir.glob("*.whl"))), **travel_bytes(carried=(args.dir,))}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
