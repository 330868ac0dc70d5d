#!/usr/bin/env bash
# Install csd-nerf into ./.venv (created if missing). `--test` adds pytest and ruff.
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"

# open3d (imported by ns-export) needs libusb; ns-render writes videos with ffmpeg. Install them with apt when we can.
export DEBIAN_FRONTEND=noninteractive
missing=()
ldconfig -p 2>/dev/null | grep -q libusb-1.0 || missing+=(libusb-1.0-0)
command -v ffmpeg >/dev/null || missing+=(ffmpeg)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing ${missing[*]} with apt-get"
    (apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }) \
      || echo "warning: could not install ${missing[*]}: ns-export needs libusb-1.0-0, ns-render needs ffmpeg" >&2
  else
    echo "warning: ${missing[*]} missing: ns-export needs libusb-1.0-0, ns-render needs ffmpeg (sudo apt-get install ${missing[*]})" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision first, as a matched pair (a lone torch upgrade breaks torchvision's operators).
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".${extra}"
echo "csd-nerf installed in $(pwd)/.venv"
