"""tools/count_any.py: the `make typecheck` gate on uses of ``typing.Any``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# tools/count_any.py is a development tool, not part of the installed package.
_spec = importlib.util.spec_from_file_location("count_any", REPO / "tools" / "count_any.py")
assert _spec is not None and _spec.loader is not None
count_any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(count_any)


def test_names_and_attributes_count_imports_comments_and_strings_do_not():
    source = """
from typing import Any
import typing
from typing import Any as Whatever  # Any in a comment
x: Any = 1
y: dict[str, typing.Any] = {}
z = "Any"
def f(a: "Any") -> Any: ...
"""
    # x, typing.Any, the return annotation; the string annotation "Any" is text, not a name
    assert count_any.count_any(source) == 3


def test_the_limit_fails_the_run_and_each_file_is_listed(tmp_path, capsys):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("from typing import Any\nA: Any = 1\nB: Any = 2\n")
    (package / "sub" / "b.py").write_text("from typing import Any\nC: Any = 3\n")
    (package / "clean.py").write_text("D: int = 4\n")

    assert count_any.main([str(package), "--max", "3"]) == 0
    out = capsys.readouterr().out
    assert f"2  {package / 'a.py'}" in out and f"1  {package / 'sub' / 'b.py'}" in out
    assert "clean.py" not in out
    assert "3  uses of Any" in out and "ok" in out

    assert count_any.main([str(package), "--max", "2"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_a_file_that_does_not_parse_is_an_error(tmp_path):
    (tmp_path / "bad.py").write_text("def (:\n")
    with pytest.raises(SyntaxError):
        count_any.count_package(tmp_path)
