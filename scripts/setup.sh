#!/usr/bin/env bash
# Idempotent set-up of everything seqserve needs besides Rust itself:
#   - Debian packages (only if missing): a C/C++ toolchain, python3-venv and redis-server (tests)
#   - a Python virtualenv holding torch==2.13.0 from PyPI (libtorch for the tch crate) and the test-only
#     Python packages; cached OUTSIDE the clone so that every clone and CI run reuses it.
# Prints `export` lines for the environment the build needs when called with --print-env.
set -euo pipefail

TORCH_VERSION=2.13.0
CACHE_ROOT=${SEQSERVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/seqserve}
VENV=${SEQSERVE_VENV:-$CACHE_ROOT/venv-torch-$TORCH_VERSION}
# Python packages the tests use (reference forward pass, safetensors reader, independent metrics).
# ranx: an independent implementation of the ranking metrics, to check ours against.
PY_EXTRA=(numpy safetensors ranx==0.3.21)
STAMP="$VENV/.seqserve-torch-installed"
EXTRA_STAMP="$VENV/.seqserve-extras"

say() { echo "[setup] $*" >&2; }

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# The history store's shared backend: the tests start a redis-server of their own on a free port.
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)

if ! command -v python3 >/dev/null 2>&1; then
  say "python3 is missing: install Python 3 (e.g. 'apt-get install python3 python3-venv') and rerun"
  exit 1
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need_apt+=(python3-venv)
fi

if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    say "installing Debian packages: ${need_apt[*]}"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >&2
  else
    say "missing system packages (${need_apt[*]}) and no apt-get to install them"
    exit 1
  fi
fi

mkdir -p "$CACHE_ROOT"
# One installer at a time per machine (parallel clones or CI jobs share the cache).
exec 9>"$CACHE_ROOT/.lock"
command -v flock >/dev/null 2>&1 && flock 9

if [ ! -f "$STAMP" ]; then
  say "creating virtualenv with torch==$TORCH_VERSION at $VENV (several GB, once per machine)"
  mkdir -p "$CACHE_ROOT"
  # Build into a temporary dir and move it into place so an interrupted install never looks complete.
  # (A venv is not relocatable, so it is created at its final path and the stamp marks completion.)
  python3 -m venv "$VENV" >&2 || { say "python3 -m venv failed: install python3-venv"; exit 1; }
  "$VENV/bin/python" -m pip --version >/dev/null 2>&1 || { say "pip is missing in the venv: install python3-pip / python3-venv"; exit 1; }
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" >&2
  "$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__" >&2
  touch "$STAMP"
  say "torch installed"
fi
# The test-only packages are re-checked whenever their list changes (a cached venv gains new ones).
# SEQSERVE_NO_TEST_PACKAGES=1 (the image build) leaves them out.
if [ -z "${SEQSERVE_NO_TEST_PACKAGES:-}" ] && [ "$(cat "$EXTRA_STAMP" 2>/dev/null)" != "${PY_EXTRA[*]}" ]; then
  say "installing test packages into $VENV: ${PY_EXTRA[*]}"
  "$VENV/bin/python" -m pip install -q "${PY_EXTRA[@]}" >&2
  "$VENV/bin/python" -c "import torch, safetensors, numpy, ranx" >&2
  echo "${PY_EXTRA[*]}" > "$EXTRA_STAMP"
fi

if [ "${1:-}" = "--print-env" ]; then
  echo "export VIRTUAL_ENV='$VENV'"
  echo "export PATH='$VENV/bin':\"\$PATH\""
  echo "export LIBTORCH_USE_PYTORCH=1"
  echo "export SEQSERVE_PYTHON='$VENV/bin/python'"
fi
