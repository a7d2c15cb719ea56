"""A file name that is not valid UTF-8 is one row's error, never the whole call's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cxrlake

BAD_NAME = b"img3\xff.jpeg"


@pytest.fixture()
def folder(tmp_path: Path, fullres_paths: list[str]) -> Path:
    shutil.copyfile(fullres_paths[0], os.path.join(os.fsencode(tmp_path), BAD_NAME))
    shutil.copyfile(fullres_paths[1], tmp_path / "ok.jpeg")
    return tmp_path


def test_every_kernel_gives_that_row_an_error_and_scores_the_others(folder: Path):
    bad = os.fsdecode(os.path.join(os.fsencode(folder), BAD_NAME))
    good = str(folder / "ok.jpeg")
    expected = f"file name is not valid UTF-8: {folder}/img3\\xff.jpeg"
    batch = cxrlake.predict([bad, good])
    assert batch.column("error").to_pylist() == [expected, None]
    assert batch.column("probability")[0].as_py() is None
    assert 0.0 <= batch.column("probability")[1].as_py() <= 1.0
    for kernel in (cxrlake.decode, cxrlake.features, cxrlake.analyze):
        assert kernel([good, bad]).column("error").to_pylist() == [None, expected]
    _, errors = cxrlake.preprocess([bad])
    assert errors.to_pylist() == [expected]
    # bytes paths (os.PathLike over bytes) take the same way
    assert cxrlake.predict([Path(bad)]).column("error").to_pylist() == [expected]


def test_predict_cli_prints_the_name_escaped_and_goes_on(folder: Path):
    result = subprocess.run(
        [sys.executable, "-m", "cxrlake.cli", "predict", str(folder), "--no-progress"],
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.decode("utf-8").splitlines()]
    by_path = {r["path"]: r for r in records}
    assert set(by_path) == {f"{folder}/img3\\xff.jpeg", f"{folder}/ok.jpeg"}
    assert by_path[f"{folder}/img3\\xff.jpeg"]["error"].startswith("file name is not valid UTF-8")
    assert by_path[f"{folder}/ok.jpeg"]["error"] is None
    assert b"scored 1, 1 errors, 0 skipped" in result.stderr
