#!/usr/bin/env bash
# Installs the one wheel in WHEEL_DIR into a new, empty venv (the form Databricks clusters get:
# the wheel and its declared dependencies, nothing from this checkout) and, from outside the
# checkout, imports cxrlake and scores one film with the shipped model through the installed
# `cxrlake predict`.
#
# usage: tools/wheel_smoke.sh WHEEL_DIR FILM
set -euo pipefail
wheel_dir=$1
film=$(realpath "$2")
shopt -s nullglob
wheels=("$wheel_dir"/cxrlake-*.whl)
if [ ${#wheels[@]} -ne 1 ]; then
  echo "wheel smoke: expected one cxrlake wheel in $wheel_dir, found ${#wheels[@]} (make wheel)" >&2
  exit 1
fi
wheel=$(realpath "${wheels[0]}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check "$wheel"
cd "$work"
"$work/venv/bin/python" - "$film" <<'EOF'
import json, os, subprocess, sys

import cxrlake

film = sys.argv[1]
assert "site-packages" in cxrlake.__file__, cxrlake.__file__  # the installed wheel, not a checkout
model = cxrlake.Model()
batch = cxrlake.predict([film])
p = batch.column("probability")[0].as_py()
assert batch.column("error")[0].as_py() is None and 0.0 <= p <= 1.0, batch.to_pylist()
cli = os.path.join(os.path.dirname(sys.executable), "cxrlake")
out = subprocess.run([cli, "predict", film], capture_output=True, text=True, check=True).stdout
row = json.loads(out.splitlines()[0])
assert abs(row["probability"] - p) < 1e-9, (row, p)
print(f"wheel smoke: {os.path.basename(cxrlake.__file__)} from {cxrlake.__file__.split('site-packages')[0]}"
      f"site-packages, model {model.name} {model.version}, P(pneumonia) {p:.3f} for {film}")
EOF
