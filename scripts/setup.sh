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

# uv, when it can be had, installs the environment in seconds (pip takes a minute and a half
# here, most of it unpacking PyTorch; uv links it from its cache). It is found on PATH or
# installed once into build/tools with pip; anything amiss (or SYSTOLIC_SETUP_PIP=1), and pip
# does the work as before.
UV=""
if [ "${SYSTOLIC_SETUP_PIP:-}" != 1 ]; then
  UV=$(command -v uv 2>/dev/null || true)
  if [ -z "$UV" ]; then
    [ -x build/tools/uv/bin/uv ] || "$PY" -m pip install -q --disable-pip-version-check \
      --target build/tools/uv uv >/dev/null 2>&1 || true
    [ -x build/tools/uv/bin/uv ] && UV=build/tools/uv/bin/uv
  fi
fi

# pip's configuration (files and PIP_* variables: local wheels, mirrors, constraints) for uv,
# which reads only its own: uv then installs what pip would, from where pip would.
uv_env() {
  local conf v
  conf=$("$PY" -m pip config list 2>/dev/null || true)
  pip_get() {   # $1: PIP_* variable, $2: pip's key (``global.`` or ``install.``; a list's
                # items, newline-separated in pip's files, printed as \n, joined by spaces)
    local v="${!1:-}"
    [ -z "$v" ] && v=$(printf '%s\n' "$conf" \
      | sed -n "s/^\(global\|install\)\.$2='\(.*\)'\$/\2/p" | tail -n 1 | sed 's/\\n/ /g')
    printf '%s' "$v"
  }
  v=$(pip_get PIP_INDEX_URL index-url);             [ -n "$v" ] && export UV_INDEX_URL="$v"
  v=$(pip_get PIP_EXTRA_INDEX_URL extra-index-url); [ -n "$v" ] && export UV_EXTRA_INDEX_URL="$v"
  v=$(pip_get PIP_FIND_LINKS find-links);           [ -n "$v" ] && export UV_FIND_LINKS="$v"
  v=$(pip_get PIP_CONSTRAINT constraint);           [ -n "$v" ] && export UV_CONSTRAINT="$v"
  v=$(pip_get PIP_CERT cert);                       [ -n "$v" ] && export SSL_CERT_FILE="$v"
  # pip weighs every index alike; uv by default only the first that has a package.
  export UV_INDEX_STRATEGY=unsafe-best-match
  return 0
}

install_with() {   # $1: the installer's name; the rest: its install command
  local tool=$1
  shift
  # The CPU build of PyTorch first (a plain `torch` requirement may pull a multi-GB CUDA build).
  "$@" "torch==2.13.0" 2>/dev/null \
    || echo "systolic setup: torch 2.13.0 is not available here; $tool will choose a torch>=2.4"
  "$@" -e ".[dev]"
}

install_uv() {
  uv_env
  if [ ! -x .venv/bin/python ]; then
    echo "systolic setup: creating .venv (uv)"
    "$UV" venv -q --seed --python "$PY" .venv || return 1
  fi
  install_with uv "$UV" pip install -q -p .venv/bin/python
}

install_pip() {
  if [ ! -x .venv/bin/python ]; then
    echo "systolic setup: creating .venv"
    "$PY" -m venv .venv
  fi
  .venv/bin/python -m pip install -q --upgrade pip
  install_with pip .venv/bin/python -m pip install -q
}

if [ -z "$UV" ] || ! (install_uv); then
  [ -n "$UV" ] && echo "systolic setup: uv failed; installing with pip"
  install_pip
fi
echo "systolic setup: ready (.venv/bin/systolic)"
