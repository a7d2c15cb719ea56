#!/usr/bin/env sh
# Checks, before a long build, that `maturin build --zig [--target TRIPLE]` has what it needs, and
# says how to get each missing piece. Used by `make wheel` and by the bundle's artifact build
# (bundle/databricks.yml), which runs on whatever machine deploys.
#
# usage: tools/wheel_toolchain.sh [TRIPLE]     exit 0 when everything is there, else 1
set -u
target=${1:-}
missing=0
say() { echo "cxrlake wheel build: $*" >&2; missing=1; }

command -v cargo >/dev/null 2>&1 ||
  say "cargo not found on PATH: install Rust (https://rustup.rs)"
command -v maturin >/dev/null 2>&1 ||
  say "maturin not found on PATH: pip install 'maturin>=1.9,<2' (in this checkout: make setup, then put .venv/bin on PATH)"
# maturin --zig runs `zig`, or `python-zig` from the ziglang pip package, found on PATH.
if ! command -v zig >/dev/null 2>&1 && ! command -v python-zig >/dev/null 2>&1; then
  say "zig not found on PATH (neither zig nor python-zig): pip install ziglang (in this checkout: make setup, then put .venv/bin on PATH); maturin --zig links the manylinux2014 wheel with it"
fi
if [ -n "$target" ] && command -v rustup >/dev/null 2>&1; then
  rustup target list --installed 2>/dev/null | grep -qx "$target" ||
    say "Rust target $target is not installed: rustup target add $target"
fi
exit $missing
