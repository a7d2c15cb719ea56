"""The type stub of the compiled module matches the module (mypy's stubtest).

``python/cxrlake/_internal.pyi`` is written by hand; `make typecheck` checks the package against
it, so a function added, renamed or given another signature in ``src/py/`` must be stated there
too. stubtest imports the built extension and compares every name, parameter and default.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_stub_states_every_function_and_parameter_of_the_extension():
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy.stubtest",
            "cxrlake._internal",
            "--mypy-config-file",
            str(REPO / "pyproject.toml"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
