"""Count the uses of ``typing.Any`` in a Python package and fail above a limit.

``python tools/count_any.py python/cxrlake --max 80`` parses every ``.py`` file under the folder
(``ast``, so comments and strings do not count) and counts each name or attribute ``Any``
(``Any``, ``typing.Any``) outside import statements. It prints the count of each file that has
any, largest first, then the total, and exits 1 when the total is above ``--max``: ``Any`` is
kept for the true boundaries (JSON bodies, third-party objects without types), and ``make lint``
runs this so the count cannot drift up unnoticed.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def count_any(source: str) -> int:
    """Number of ``Any`` names and ``<module>.Any`` attributes in ``source`` (imports excluded)."""
    count = 0
    for node in ast.walk(ast.parse(source)):
        name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)
        if isinstance(node, (ast.Name, ast.Attribute)) and name == "Any":
            count += 1
    return count


def count_package(root: Path) -> dict[Path, int]:
    """``Any`` count of every ``.py`` file under ``root`` that has at least one."""
    counts = {}
    for path in sorted(root.rglob("*.py")):
        n = count_any(path.read_text(encoding="utf-8"))
        if n:
            counts[path] = n
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="package folder, e.g. python/cxrlake")
    parser.add_argument("--max", type=int, required=True, help="largest total allowed")
    args = parser.parse_args(argv)
    counts = count_package(args.root)
    for path, n in sorted(counts.items(), key=lambda item: (-item[1], str(item[0]))):
        print(f"{n:5d}  {path}")
    total = sum(counts.values())
    verdict = "ok" if total <= args.max else "FAIL: above the limit"
    print(f"{total:5d}  uses of Any in {args.root} (limit {args.max}): {verdict}")
    return 0 if total <= args.max else 1


if __name__ == "__main__":
    sys.exit(main())
