#!/usr/bin/env bash
# The GPU check: the GPU tests (tests/test_gpu.py, `pytest -m gpu`) and the benchmarks, each under `timeout`, most
# important first; one JSON line per stage ({"stage", "status": ok|failed|timeout|skipped, "seconds", figures...})
# appended to DIR/gpu_check.jsonl, every log in DIR/logs.tar.gz.
#
#   bash scripts/gpu_check.sh --output DIR              # on a CUDA machine: real sizes, about 8 minutes
#   bash scripts/gpu_check.sh --output DIR --rehearse   # on a CPU with the repository's .venv: tiny sizes
#
# Options: --stages "tests bench_step ..." (default: all of them, in this order: tests bench_step bench_nerf
# gsplat_build tests_gsplat bench_splat bench_2d), --budget-s S (the whole check; default 470 on a GPU, 1800 in a
# rehearsal: a stage gets at most what is left), --timeout-s S (at most S per stage).
# When .whl/ exists (scripts/make_wheel_bundle.sh), its wheels are installed into a scratch folder put first on
# PYTHONPATH; the machine's own torch is never touched. gsplat's CUDA build starts in the background at once.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out="" rehearse=0 budget="" cap=100000
stages="tests bench_step bench_nerf gsplat_build tests_gsplat bench_splat bench_2d"
while [ $# -gt 0 ]; do
    case $1 in
        --output) out=$2; shift 2 ;;
        --rehearse) rehearse=1; shift ;;
        --stages) stages=$2; shift 2 ;;
        --budget-s) budget=$2; shift 2 ;;
        --timeout-s) cap=$2; shift 2 ;;
        -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$out" ] || { echo "gpu_check.sh: --output DIR is required (see --help)" >&2; exit 2; }
mkdir -p "$out" && out=$(cd "$out" && pwd)
logs=$out/logs jsonl=$out/gpu_check.jsonl
rm -rf "$logs" && mkdir -p "$logs"
if [ $rehearse = 1 ]; then py=$repo/.venv/bin/python; budget=${budget:-1800}; else py=${PYTHON:-python3}; budget=${budget:-470}; fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
cd "$repo" || exit 2

# emit STAGE STATUS SECONDS [REASON]: one JSON line from the stage's logs (figures read by the Python below).
emit() {
    "$py" - "$logs" "$rehearse" "$@" >"$logs/line.json" <<'PY'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

logs, rehearse, stage, status, seconds = Path(sys.argv[1]), sys.argv[2] == "1", *sys.argv[3:6]
line = {"stage": stage, "status": status, "seconds": round(float(seconds), 1)}
if len(sys.argv) > 6 and sys.argv[6]:
    line["reason"] = sys.argv[6]

def rows(path):
    found = []
    for x in (path.read_text(errors="replace") if path.is_file() else "").splitlines():
        try:
            found.append(json.loads(x)) if x.startswith("{") else None
        except ValueError:
            pass
    return found

def tail(path):
    lines = [x for x in (path.read_text(errors="replace") if path.is_file() else "").splitlines() if x.strip()]
    return lines[-1][-300:] if lines else "no output"

if stage == "setup":
    import importlib.metadata as md, platform, sysconfig
    line.update(rehearsal=rehearse, python=platform.python_version())
    try:
        import torch
        line.update(torch=torch.__version__, cuda=torch.cuda.is_available())
        line["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as error:
        line.update(status="failed", reason=f"torch: {type(error).__name__}: {error}"[:300])
    for name in ("numpy", "transformers", "diffusers", "nerfstudio", "nerfacc", "gsplat", "tinycudann"):
        try:
            line[name] = md.version(name)
        except md.PackageNotFoundError:
            line[name] = None
    line["python_h"] = (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file()
    line["bundle"] = (logs / "bundle.txt").read_text().strip()
elif stage.startswith("tests"):
    cases = ET.parse(logs / f"{stage}.xml").getroot().iter("testcase") if (logs / f"{stage}.xml").is_file() else []
    outcomes = {}
    for case in cases:
        found = [c for c in case if c.tag in ("failure", "error", "skipped")]
        outcomes[case.get("name")] = found[0].tag if found else "passed"
        if found and found[0].tag != "skipped":
            outcomes[case.get("name")] += ": " + (found[0].get("message") or "")[:300]
        elif found:
            line.setdefault("skip_reasons", sorted({(found[0].get("message") or "")[:200]}))
    line["tests"] = outcomes
    line["figures"] = {r.pop("test"): r for r in rows(logs / f"{stage}.figures.jsonl")}
    if status == "ok" and outcomes and all(v == "skipped" for v in outcomes.values()):
        line.update(status="skipped", reason="all skipped: " + "; ".join(line["skip_reasons"]))
    if status == "failed" and not outcomes:
        line.setdefault("reason", tail(logs / f"{stage}.log"))
elif stage == "gsplat_build":
    if status != "ok" and status != "skipped":
        line.setdefault("reason", tail(logs / "gsplat_build.log"))
elif stage.startswith("bench"):
    found = rows(logs / f"{stage}.jsonl") or rows(logs / f"{stage}.log")
    line["rows"] = found
    errors = [r["error"] for r in found if "error" in r]
    if status == "ok" and (errors or not found):
        line["status"] = "failed"
        line["reason"] = errors[0][:300] if errors else "no result: " + tail(logs / f"{stage}.log")
    elif status != "ok":
        line.setdefault("reason", tail(logs / f"{stage}.log"))
    if stage == "bench_step":
        n4 = next((r for r in found if r.get("n_particles") == 4 and "variant" not in r), None)
        if n4:
            met = n4["step_ms"] <= 120 and n4["unet_share"] >= 0.9 and n4["unet_evals_per_particle"] == 5
            line["goal_n4"] = {k: n4[k] for k in ("step_ms", "unet_share", "unet_evals_per_particle", "peak_mem_mb")}
            line["goal_n4"].update(met=met, goal="H100, ip2p, 512 px, N=4: <= 120 ms, >= 90 % UNet, 5 evals")
    if stage in ("bench_nerf", "bench_splat"):
        line["projection_2000_steps"] = [
            {
                "representation": r.get("representation"), "resolution": r["resolution"], "n": r["n"],
                "mode": r.get("mode"), "minutes": round(2000 * r["step_s"] / 60, 1), "peak_step_mb": r["peak_step_mb"],
                **({"met": 2000 * r["step_s"] <= 240 and r["peak_step_mb"] <= 12288} if stage == "bench_splat" else {}),
            }
            for r in found if "step_s" in r
        ]
        line["projection_note"] = "2000 x the mean timed step (no densification), not a measured 2000-step run"
        if stage == "bench_splat":
            line["goal"] = "H100, ip2p prior, 512 px, N=4: 2000 steps <= 4 min, <= 12 GB"
print(json.dumps(line))
PY
    [ -s "$logs/line.json" ] || printf '{"stage": "%s", "status": "%s", "seconds": %s}\n' "$1" "$2" "$3" >"$logs/line.json"
    cat "$logs/line.json" >>"$jsonl"
    grep -q -E '"status": "(failed|timeout)"' "$logs/line.json" && bad=1
    cut -c1-400 "$logs/line.json"
}

start=$SECONDS bad=0 first=$(($(cat "$jsonl" 2>/dev/null | wc -l) + 1))
# run STAGE CAP_S CMD...: the command under `timeout` (its whole process group), output in logs/STAGE.log.
run() {
    local stage=$1 limit=$2 t0=$SECONDS rc status reason=""
    shift 2
    local left=$((budget - (SECONDS - start)))
    ((limit > cap)) && limit=$cap
    ((limit > left)) && limit=$left
    if ((left < 5)); then
        emit "$stage" skipped 0 "no time left in the check's budget (${budget} s)"
    else
        echo "== $stage (at most ${limit} s): $*"
        timeout --kill-after=10 "$limit" "$@" >"$logs/$stage.log" 2>&1
        rc=$?
        case $rc in
            0) status=ok ;;
            124 | 137) status=timeout reason="stopped after ${limit} s" ;;
            *) status=failed ;;
        esac
        emit "$stage" "$status" $((SECONDS - t0)) "$reason"
    fi
}

# Setup: the carried wheels (GPU machine only), Python.h for gsplat's build, then gsplat's build in the background.
site=${GPU_CHECK_SITE:-/tmp/csd_gpu_check_site}
echo "none: the environment's own packages" >"$logs/bundle.txt"
if [ $rehearse = 0 ] && ls "$repo"/.whl/*.whl >/dev/null 2>&1; then
    stamp=$(ls -l "$repo"/.whl/*.whl)
    if [ "$(cat "$site/.stamp" 2>/dev/null)" != "$stamp" ]; then
        rm -rf "$site"
        "$py" -m pip install -q --disable-pip-version-check --no-index --no-deps --find-links "$repo/.whl" \
            --target "$site" "$repo"/.whl/*.whl >"$logs/bundle.log" 2>&1 && echo "$stamp" >"$site/.stamp"
    fi
    echo "$(ls "$repo"/.whl/*.whl | wc -l) wheels from .whl/ in $site$([ -f "$site/.stamp" ] || echo ' (install FAILED)')" >"$logs/bundle.txt"
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
include=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
if [ ! -f "$include/Python.h" ] && [ -f "$repo/.whl/python3.12-include.tar.gz" ]; then
    mkdir -p "$site.include" && tar xzf "$repo/.whl/python3.12-include.tar.gz" -C "$site.include"
    export CPATH=$site.include/python3.12${CPATH:+:$CPATH}
fi
emit setup ok $((SECONDS - start))

build_pid="" build_t0=$SECONDS
if [ $rehearse = 0 ] && [[ " $stages " == *" gsplat_build "* ]] && command -v nvcc >/dev/null \
    && "$py" -c 'import gsplat, torch; assert torch.cuda.is_available()' 2>/dev/null; then
    cores=$(nproc)
    MAX_JOBS=$((cores > 4 ? cores - 2 : 2)) timeout --kill-after=10 $((budget - 30)) nice -n 10 "$py" -c \
        'from gsplat.cuda._backend import _C; assert _C is not None, "gsplat built no CUDA extension"; print("built")' \
        >"$logs/gsplat_build.log" 2>&1 &
    build_pid=$!
fi

# Sizes: tiny on a CPU; on a GPU the goals' (IP2P's real configs with random weights, 512 px, N = 4).
if [ $rehearse = 1 ]; then
    dev=(--device cpu --preset tiny) pytest_gpu=() step=(--resolution 64 --particles 1 2 --steps 1 --warmup 0)
    nerfacto=(--preset cpu --resolutions 32 --particles 2 --modes deferred --steps 1 --warmup 0)
    splat=(--preset cpu --resolutions 32 --particles 2 --steps 1 --warmup 0)
    twod=(--panorama-size 256x64 --frames 3 --frame-size 64 --steps 1 --warmup 0)
else
    dev=(--device cuda --preset ip2p) pytest_gpu=(-m gpu) step=(--resolution 512 --particles 1 2 4 8 --steps 5 --warmup 2)
    nerfacto=(--preset gpu --resolutions 512 --particles 4 --modes deferred --steps 2 --warmup 1)
    splat=(--preset gpu --resolutions 512 --particles 4 --steps 5 --warmup 2)
    twod=(--steps 3 --warmup 1)
fi
for stage in $stages; do
    case $stage in
        tests | tests_gsplat)
            pick="not gsplat" && [ "$stage" = tests_gsplat ] && pick=gsplat
            CSD_GPU_FIGURES=$logs/$stage.figures.jsonl run "$stage" 240 "$py" -m pytest -q -p no:cacheprovider \
                tests/test_gpu.py "${pytest_gpu[@]}" -k "$pick" --junitxml "$logs/$stage.xml" ;;
        bench_step) run bench_step 120 "$py" scripts/bench_step.py "${dev[@]}" "${step[@]}" ;;
        bench_2d) run bench_2d 120 "$py" scripts/bench_2d.py "${dev[@]}" "${twod[@]}" ;;
        bench_nerf) run bench_nerf 150 "$py" scripts/bench_nerf.py --representation nerfacto "${nerfacto[@]}" \
            --out "$logs/bench_nerf.jsonl" ;;
        bench_splat) run bench_splat 120 "$py" scripts/bench_nerf.py --representation splat "${splat[@]}" \
            --out "$logs/bench_splat.jsonl" ;;
        gsplat_build)
            if [ $rehearse = 1 ]; then
                emit gsplat_build skipped 0 "a rehearsal has no CUDA: gsplat has CUDA kernels only"
            elif [ -z "$build_pid" ]; then
                emit gsplat_build skipped 0 "not started: needs CUDA, nvcc on PATH and gsplat importable"
            else
                while kill -0 "$build_pid" 2>/dev/null && ((SECONDS - start < budget - 60)); do sleep 2; done
                if kill -0 "$build_pid" 2>/dev/null; then
                    kill "$build_pid"
                    emit gsplat_build timeout $((SECONDS - build_t0)) "still compiling with 60 s of the budget left"
                else
                    wait "$build_pid" && status=ok || status=failed
                    emit gsplat_build $status $((SECONDS - build_t0))
                fi
            fi ;;
        *) emit "$stage" skipped 0 "unknown stage" ;;
    esac
done
[ -n "$build_pid" ] && kill "$build_pid" 2>/dev/null

echo "== summary ($((SECONDS - start)) s): $jsonl, logs in $out/logs.tar.gz"
tail -n "+$first" "$jsonl" | "$py" -c 'import json, sys
for x in sys.stdin:
    r = json.loads(x)
    print("%-13s %-8s %6s s  %s" % (r["stage"], r["status"], r["seconds"], r.get("reason", "")[:150]))'
tar czf "$out/logs.tar.gz" -C "$out" logs && rm -rf "$logs"
exit $bad
