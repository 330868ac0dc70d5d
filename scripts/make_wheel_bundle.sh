#!/usr/bin/env bash
# Wheels a CUDA machine without our dependencies needs to run the GPU check (scripts/gpu_check.sh installs them from
# .whl/ when it exists): Python 3.12, x86-64, no dependencies resolved (the machine has torch, transformers, numpy,
# ...; open3d and the rest of nerfstudio's optional dependencies are on no path the check takes).
#
#   bash scripts/make_wheel_bundle.sh [DEST]          # DEST: .whl/ in the repository root (ignored by git)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$repo/.whl}
py=${PYTHON:-$repo/.venv/bin/python}
pins=(
    diffusers==0.42.1 nerfstudio==1.1.5 nerfacc==0.5.2 gsplat==1.4.0   # gsplat JIT-compiles its CUDA on first use
    tyro==1.0.17 docstring_parser==0.18.0                              # nerfstudio's configs
    viser==0.2.7 msgspec==0.22.0 websockets==17.4                      # imported by nerfstudio.cameras
    rawpy==0.28.0 pyquaternion==0.9.9 appdirs==1.4.4                   # imported by nerfstudio's dataparsers
    fpsample==0.3.3 pytorch-msssim==1.0.0 tensorly==0.10.0             # splatfacto and its datamanager
)
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 any; do
    platforms+=(--platform "$tag")
done
mkdir -p "$dest"
"$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --abi abi3 --abi none "${platforms[@]}" -d "$dest" "${pins[@]}"
# gsplat's build needs Python.h; gpu_check.sh unpacks this copy only where the machine's Python lacks it.
for p312 in ${PYTHON312:-} python3.12 "$(pyenv root 2>/dev/null || echo ~/.pyenv)"/versions/3.12*/bin/python3.12; do
    headers=$("$p312" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null) || continue
    if [ -f "$headers/Python.h" ]; then
        tar czf "$dest/python3.12-include.tar.gz" -C "$(dirname "$headers")" "$(basename "$headers")"
        break
    fi
done
ls "$dest"
du -sh "$dest"
