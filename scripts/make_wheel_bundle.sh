#!/usr/bin/env bash
# Download exactly the wheels the GPU machine lacks (scripts/gpu/bundle.txt: pinned, one version each, no
# dependencies) for its Python 3.12 on x86-64 manylinux into the ignored .whl/ folder, add CPython 3.12's headers
# (used there only if its Python lacks Python.h), drop anything unpinned, and print what travels.
#
#   bash scripts/make_wheel_bundle.sh [DEST]        # DEST defaults to .whl/ in the repository root
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$repo/.whl}
py=${PYTHON:-$repo/.venv/bin/python}
[ -x "$py" ] || py=python3
mapfile -t pins < <(sed -e 's/#.*//' "$repo/scripts/gpu/bundle.txt" | awk 'NF {print $1}')
mkdir -p "$dest"

# pip matches each manylinux tag exactly: list the ones these packages publish.
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
    manylinux_2_5_x86_64 manylinux1_x86_64 any; do
    platforms+=(--platform "$tag")
done
"$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none "${platforms[@]}" \
    -d "$dest" "${pins[@]}"

# gsplat's JIT build needs Python.h; the machine's Python 3.12 most likely has it, this copy is the fallback.
headers=${PYTHON312_INCLUDE:-/root/.pyenv/versions/3.12.1/include/python3.12}
if [ -f "$headers/Python.h" ] && [ ! -f "$dest/python3.12-include.tar.gz" ]; then
    tar czf "$dest/python3.12-include.tar.gz" -C "$(dirname "$headers")" "$(basename "$headers")"
fi

"$py" "$repo/scripts/gpu/bundle.py" prune --dir "$dest"
du -sh "$dest"
