#!/usr/bin/env bash
# Install csd-nerf into ./.venv (created if missing). `--test` adds pytest and ruff.
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"

# open3d (imported by ns-export) needs libusb; install it with apt when we can.
if ! ldconfig -p 2>/dev/null | grep -q libusb-1.0; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q libusb-1.0-0 >/dev/null; }) \
      || echo "warning: could not install libusb-1.0-0; ns-export needs it (apt-get install libusb-1.0-0)" >&2
  else
    echo "warning: libusb-1.0-0 is missing; ns-export needs it: sudo apt-get install libusb-1.0-0" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision first, as a matched pair (a lone torch upgrade breaks torchvision's operators).
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".${extra}"
echo "csd-nerf installed in $(pwd)/.venv"
