#!/usr/bin/env bash
# Install everything the test suite needs into ./.venv and run it. Used by CI (.ci/run) as is.
#   bash scripts/test.sh [pytest args...]
# The llama-cpp-python wheel (a ~4-minute source build) is cached under
# ~/.cache/mufun-local/wheels, keyed on its version and CMAKE_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
LLAMA_CPP_VERSION=0.3.36     # the version the suite is tested with
TORCH_VERSION=2.13.0         # the CPU build (the test extra's reference only)

step() { printf '\n== %s\n' "$*"; }

# System tools the tests use: the ffmpeg CLI (the original MuFun decodes with it, so the
# reference does too), Chromium (the web page is tested in a real headless browser) and
# strace (the offline test traces every connect()).
missing=""
command -v ffmpeg >/dev/null 2>&1 || missing="$missing ffmpeg"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v strace >/dev/null 2>&1 || missing="$missing strace"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    step "installing$missing (apt)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "note: not installed:$missing; the tests that need them will be skipped with the reason"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  step "creating .venv"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip wheel

step "llama-cpp-python $LLAMA_CPP_VERSION"
key=$(printf '%s|%s' "$LLAMA_CPP_VERSION" "${CMAKE_ARGS:-}" | sha256sum | cut -c1-12)
wheel_dir="${XDG_CACHE_HOME:-$HOME/.cache}/mufun-local/wheels/llama-cpp-python-$LLAMA_CPP_VERSION-$key"
if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building the wheel from source (about 4 minutes on 2 cores; cached afterwards)"
  mkdir -p "$(dirname "$wheel_dir")"
  tmp=$(mktemp -d "$wheel_dir.partial-XXXXXX")   # another run may be building too
  "$VPY" -m pip wheel -q --no-deps "llama-cpp-python==$LLAMA_CPP_VERSION" -w "$tmp"
  rm -rf "$wheel_dir" && mv "$tmp" "$wheel_dir"
fi
"$VPY" -m pip install -q "$wheel_dir"/llama_cpp_python-*.whl

step "torch $TORCH_VERSION (CPU) and the package with its test extra"
"$VPY" -m pip install -q "torch==$TORCH_VERSION"
"$VPY" -m pip install -q -e ".[test]"

step "pytest"
exec "$VPY" -m pytest -q "$@"
