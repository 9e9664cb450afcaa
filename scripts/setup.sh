#!/usr/bin/env bash
# Set up systolic in ./.venv: system simulator (Icarus) where apt is available, then the
# package with its development tools. Safe to run again; it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v iverilog >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "systolic setup: installing Icarus Verilog (apt-get install iverilog)"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq iverilog >/dev/null
  else
    echo "systolic setup: install Icarus Verilog 11+ (iverilog) with your package manager" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "systolic setup: creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build of PyTorch first (a plain `torch` requirement may pull a multi-GB CUDA build).
.venv/bin/python -m pip install -q "torch==2.13.0" 2>/dev/null \
  || echo "systolic setup: torch 2.13.0 is not available here; pip will choose a torch>=2.4"
.venv/bin/python -m pip install -q -e ".[dev]"
echo "systolic setup: ready (.venv/bin/systolic)"
