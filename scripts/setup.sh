#!/usr/bin/env bash
# Set up systolic in ./.venv: the system packages (Icarus, LZ4's header) where apt is available,
# then the package with its development tools. Safe to run again; it skips what is already there.
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

# Verilator's FST waveform writer (simulate --waves) compiles against LZ4's header.
if ! printf '#include <lz4.h>\n' | ${CXX:-g++} -x c++ -E - >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "systolic setup: installing LZ4's header for FST waveforms (apt-get install liblz4-dev)"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq liblz4-dev >/dev/null
  else
    echo "systolic setup: install LZ4's development header (liblz4-dev) for FST waveforms" >&2
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
