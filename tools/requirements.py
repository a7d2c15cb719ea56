"""Print the requirements of cxrlake's pyproject.toml, one per line, for ``pip install -r``.

``python tools/requirements.py pyproject.toml local train spark dev`` prints the runtime
dependencies followed by those of the named extras. The Makefile installs these into the venv
and then builds the extension with ``maturin develop``, so that pyproject.toml is the only list
of packages (no second list in the Makefile to drift from it).
"""

from __future__ import annotations

import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    """Runtime dependencies plus those of ``extras`` (an unknown extra is an error)."""
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(
            f"{pyproject}: no extra {', '.join(unknown)} (have: {', '.join(optional)})"
        )
    out = list(project.get("dependencies", []))
    for extra in extras:
        out.extend(r for r in optional[extra] if r not in out)
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: requirements.py pyproject.toml [extra ...]")
    print("\n".join(requirements(sys.argv[1], sys.argv[2:])))
