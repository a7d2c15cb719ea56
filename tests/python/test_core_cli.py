"""The ``cxrlake predict`` command on the real images and on a directory with bad files."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

import cxrlake


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cxrlake.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_predict_scores_every_fullres_image(shared_data, fullres_paths):
    result = run_cli("predict", "--threads", "2", str(shared_data / "chest_xray_fullres"))
    assert result.returncode == 0, result.stderr
    rows = records(result.stdout)
    assert sorted(r["path"] for r in rows) == sorted(fullres_paths)
    model = cxrlake.Model()
    for row in rows:
        assert set(row) == {"path", "probability", "predicted_label", "label_name", "error"}
        assert row["error"] is None, row
        assert 0.0 <= row["probability"] <= 1.0
        assert row["predicted_label"] == int(row["probability"] >= model.threshold)
        assert row["label_name"] == model.labels[row["predicted_label"]]


@pytest.fixture
def mixed_dir(tmp_path: Path, fullres_paths) -> Path:
    good = [Path(p) for p in fullres_paths[:3]]
    (tmp_path / "nested").mkdir()
    for i, path in enumerate(good):
        (tmp_path / ("nested" if i == 2 else ".") / path.name).write_bytes(path.read_bytes())
    data = good[0].read_bytes()
    (tmp_path / "corrupt.jpeg").write_bytes(data[: len(data) // 3])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "readme.png").write_text("this is not an image\n")
    (tmp_path / "notes.txt").write_text("skipped: not an image extension\n")
    return tmp_path


def test_predict_reports_one_error_per_bad_file(mixed_dir: Path):
    result = run_cli("predict", str(mixed_dir))
    assert result.returncode == 0, result.stderr
    by_name = {Path(r["path"]).name: r for r in records(result.stdout)}
    assert len(by_name) == 6  # 3 good + 3 bad; notes.txt is not an image file name
    errors = {name: row["error"] for name, row in by_name.items() if row["error"]}
    assert errors == {
        "corrupt.jpeg": "truncated JPEG",
        "empty.jpg": f"empty file: {mixed_dir / 'empty.jpg'}",
        "readme.png": "not an image (unknown format)",
    }
    for name, row in by_name.items():
        assert (row["probability"] is None) == (name in errors)


def test_explicit_files_are_scored_whatever_their_extension(mixed_dir: Path):
    missing = mixed_dir / "missing.jpeg"
    result = run_cli("predict", "--format", "csv", str(mixed_dir / "notes.txt"), str(missing))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["error"] for r in rows] == [
        "not an image (unknown format)",
        f"file not found: {missing}",
    ]
    assert rows[0]["probability"] == ""


def test_csv_output_has_the_documented_header(fullres_paths):
    result = run_cli("predict", "--format", "csv", fullres_paths[0])
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0]
    assert header == "path,probability,predicted_label,label_name,error"


def test_missing_model_exits_3_with_a_message(tmp_path: Path, fullres_paths):
    result = run_cli("predict", "--model", str(tmp_path / "absent.onnx"), fullres_paths[0])
    assert result.returncode == 3
    assert "model file not found" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [[], ["predict"], ["predict", "--threads", "0", "x.jpeg"], ["predict", "--format", "xml", "x"]],
    ids=["no-command", "no-paths", "zero-threads", "bad-format"],
)
def test_usage_errors_exit_2(args):
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr


def test_help_documents_the_exit_codes():
    result = run_cli("predict", "--help")
    assert result.returncode == 0
    for text in ("--model", "--threads", "--format", "exit codes", "3  model missing"):
        assert text in result.stdout
