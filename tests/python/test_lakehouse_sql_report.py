"""DuckDB SQL layer, HTML report, maintenance and CLI over a real pipeline run."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

import cxrlake
from cxrlake.lakehouse import schemas
from cxrlake.lakehouse.maintain import maintain
from cxrlake.lakehouse.pipeline import run_pipeline
from cxrlake.lakehouse.report import write_report
from cxrlake.lakehouse.sql import connect, format_result, query

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("CXRLAKE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="module")
def lakehouse(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for label in ("NORMAL", "PNEUMONIA"):
        dst = src / "train" / label
        dst.mkdir(parents=True)
        for name in sorted(os.listdir(DATA / "chest_xray" / "train" / label))[:8]:
            shutil.copyfile(DATA / "chest_xray" / "train" / label / name, dst / name)
    (src / "train" / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8\xff garbage")
    lh = tmp_path_factory.mktemp("lh")
    run_pipeline([src], lh, progress=False)
    return lh


def test_sql_example_returns_probabilities(lakehouse):
    result = query(
        lakehouse,
        "SELECT file_path, predict(file_path) AS p FROM bronze.kaggle_xray_metadata "
        "WHERE filename <> 'broken.jpeg' ORDER BY file_path LIMIT 5",
    )
    assert result.num_rows == 5
    probs = result.column("p").to_pylist()
    assert all(0.0 <= p <= 1.0 for p in probs)
    direct = cxrlake.predict(result.column("file_path").to_pylist()).column("probability")
    assert probs == pytest.approx(direct.to_pylist(), abs=1e-9)


def test_sql_udfs_on_bytes_and_errors(lakehouse):
    con = connect(lakehouse)
    try:
        rows = con.execute(
            "SELECT filename, predict_bytes(content) AS p, predict_label(file_path) AS l, "
            "quality_score(file_path) AS q, image_error_bytes(content) AS e "
            "FROM bronze.kaggle_xray_metadata ORDER BY filename"
        ).fetchall()
    finally:
        con.close()
    assert len(rows) == 17
    for name, p, label, q, err in rows:
        if name == "broken.jpeg":
            assert p is None and label is None and q is None and err
        else:
            assert 0 <= p <= 1 and label in (0, 1) and 0 <= q <= 1 and err is None


def test_sql_path_functions_read_only_the_lakehouse_sources(lakehouse, tmp_path, monkeypatch):
    monkeypatch.delenv("CXRLAKE_ALLOWED_ROOTS", raising=False)
    elsewhere = tmp_path / "elsewhere.jpeg"
    shutil.copyfile(next((DATA / "chest_xray" / "train" / "NORMAL").iterdir()), elsewhere)
    sql = (
        "SELECT predict(p) AS prob, image_error(p) AS err FROM (VALUES (?), (?), (?)) t(p) "
        "ORDER BY p"
    )
    inside = query(lakehouse, "SELECT min(file_path) AS f FROM silver.xray_metadata")
    inside_path = inside.column("f")[0].as_py()
    con = connect(lakehouse)
    try:
        got = con.execute(sql, ["/etc/passwd", str(elsewhere), inside_path]).fetchall()
    finally:
        con.close()
    results = dict(zip(sorted(["/etc/passwd", str(elsewhere), inside_path]), got, strict=True))
    assert results["/etc/passwd"][0] is None and "sandbox" in results["/etc/passwd"][1]
    assert results[str(elsewhere)][0] is None and "sandbox" in results[str(elsewhere)][1]
    assert 0 <= results[inside_path][0] <= 1 and results[inside_path][1] is None
    # an explicit root opens it up
    con = connect(lakehouse, roots=[str(tmp_path)])
    try:
        prob = con.execute("SELECT predict(?)", [str(elsewhere)]).fetchall()[0][0]
    finally:
        con.close()
    assert 0 <= prob <= 1


def test_schema_qualified_names_and_summary_view(lakehouse):
    con = connect(lakehouse, udfs=False)
    try:
        for spec in schemas.TABLES:
            n = con.execute(f"SELECT count(*) FROM {spec.qualified_name}").fetchall()[0][0]
            assert n == DeltaTable(spec.path(lakehouse)).count(), spec.qualified_name
        summary = con.execute(
            f"SELECT label_name, image_count FROM {schemas.DATASET_SUMMARY_VIEW} ORDER BY 1"
        ).fetchall()
    finally:
        con.close()
    assert summary == [("NORMAL", 8), ("PNEUMONIA", 8)]
    joined = query(
        lakehouse,
        "SELECT count(*) AS n FROM gold.pneumonia_predictions p "
        "JOIN silver.xray_metadata m USING (image_id) WHERE p.true_label = m.label",
    )
    assert joined.column("n").to_pylist() == [16]


def test_format_result_formats(lakehouse):
    t = query(
        lakehouse, "SELECT filename, content FROM bronze.kaggle_xray_metadata ORDER BY 1 LIMIT 2"
    )
    text = format_result(t, "table")
    assert "filename" in text and "bytes>" in text and "(2 rows)" in text
    csv = format_result(t, "csv").splitlines()
    assert csv[0] == '"filename","content"' and len(csv) == 3
    js = [json.loads(line) for line in format_result(t, "json").splitlines()]
    assert js[0]["content"].endswith("bytes>")
    with pytest.raises(ValueError, match="unknown format"):
        format_result(t, "xml")


def test_report_is_self_contained_with_every_section(lakehouse, tmp_path):
    out = write_report(lakehouse, tmp_path / "report.html")
    text = Path(out).read_text(encoding="utf-8")
    for section in (
        "overview",
        "class-balance",
        "quality",
        "performance",
        "calibration",
        "examples",
        "quarantine",
        "dataset-summary",
        "attribution",
    ):
        assert f"id='{section}'" in text, section
    assert "CC BY 4.0" in text and "10.17632/rscbjbr9sj.2" in text
    assert "broken.jpeg" in text  # the quarantine list
    assert text.count("<svg") >= 4  # class balance, histogram, ROC, calibration
    assert "Confusion matrix" in text
    thumbs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert 1 <= len(thumbs) <= 8
    assert base64.b64decode(thumbs[0]).startswith(b"\x89PNG\r\n\x1a\n")
    # nothing fetched from elsewhere
    assert not re.search(r"(src|href)=['\"]https?://(?!doi\.org|creativecommons\.org)", text)
    assert "<script src" not in text and "<link" not in text


def test_maintain_compacts_and_keeps_rows(lakehouse, tmp_path):
    lh = tmp_path / "copy"
    shutil.copytree(lakehouse, lh)
    before = {
        s.qualified_name: DeltaTable(s.path(lh)).to_pyarrow_table().sort_by(s.keys[0])
        for s in schemas.TABLES
    }
    files_before = {
        s.qualified_name: len(DeltaTable(s.path(lh)).file_uris()) for s in schemas.TABLES
    }
    results = maintain(lh)
    assert {r["table"] for r in results} == set(before)
    for r in results:
        name = r["table"]
        spec = next(s for s in schemas.TABLES if s.qualified_name == name)
        dt = DeltaTable(spec.path(lh))
        assert len(dt.file_uris()) <= max(1, files_before[name])
        assert dt.to_pyarrow_table().sort_by(spec.keys[0]).equals(before[name]), name
        assert r["vacuum_files"] == 0  # nothing older than the 7-day retention
    assert len(DeltaTable(schemas.SILVER.path(lh)).file_uris()) == 1
    with pytest.raises(ValueError, match="safe minimum"):
        maintain(lh, retention_hours=1)


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("cxrlake")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "cxrlake.cli"]


def test_cli_sql_and_bad_arguments(lakehouse):
    ok = subprocess.run(
        [
            *_cli(),
            "sql",
            "--lakehouse",
            str(lakehouse),
            "--format",
            "csv",
            "SELECT count(*) AS n FROM gold.pneumonia_predictions",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ['"n"', "16"]
    bad = subprocess.run(
        [*_cli(), "sql", "--lakehouse", str(lakehouse), "SELECT * FROM gold.nope"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1 and "nope does not exist" in bad.stderr
    usage = subprocess.run(
        [
            *_cli(),
            "pipeline",
            "run",
            "--source",
            "/nonexistent",
            "--lakehouse",
            str(lakehouse),
            "--sample-per-label",
            "0",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert usage.returncode == 2 and "positive integer" in usage.stderr
