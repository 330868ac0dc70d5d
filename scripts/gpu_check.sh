#!/usr/bin/env bash
# The GPU check in one command (README, "The GPU check"). On the GPU machine:
#
#   bash scripts/gpu_check.sh --output "$OUT"               # installs .whl/ into a scratch target, runs the stages
#   bash scripts/gpu_check.sh --rehearse --output DIR       # here, on a CPU: the same stages at tiny sizes
#
# Everything else is scripts/gpu/check.py (--help lists the options). The GPU machine's python3 holds torch; the
# rehearsal uses the repository's .venv.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${GPU_CHECK_PYTHON:-}
if [ -z "$python" ]; then
    python=python3
    for arg in "$@"; do
        if [ "$arg" = "--rehearse" ] && [ -x "$repo/.venv/bin/python" ]; then
            python=$repo/.venv/bin/python
        fi
    done
fi
export PYTHONUNBUFFERED=1
exec "$python" "$repo/scripts/gpu/check.py" "$@"
