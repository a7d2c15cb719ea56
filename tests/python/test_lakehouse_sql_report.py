"""DuckDB SQL layer, HTML report, maintenance and the lakehouse CLI over a real pipeline run."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

import cxrlake
from cxrlake.exceptions import SandboxError
from cxrlake.lakehouse.maintain import maintain
from cxrlake.lakehouse.pipeline import run_pipeline
from cxrlake.lakehouse.report import build_report, write_report
from cxrlake.lakehouse.report.charts import (
    bar_chart,
    count_ticks,
    histogram,
    time_series,
    unit_plot,
)
from cxrlake.lakehouse.report.png import png_gray, thumbnail
from cxrlake.lakehouse.sql import connect, format_result, query, split_statements
from cxrlake.medallion import schemas

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("CXRLAKE_SHARED_DATA", REPO.parent / "shared" / "data"))


def _tiny_png(path: Path, side: int = 32) -> None:
    from PIL import Image

    Image.new("L", (side, side), 128).save(path)


def _source(root: Path, per_label: int = 8) -> Path:
    for label in ("NORMAL", "PNEUMONIA"):
        dst = root / "train" / label
        dst.mkdir(parents=True)
        for name in sorted(os.listdir(DATA / "chest_xray" / "train" / label))[:per_label]:
            shutil.copyfile(DATA / "chest_xray" / "train" / label / name, dst / name)
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    src = _source(tmp_path_factory.mktemp("src"))
    (src / "train" / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8\xff garbage")
    _tiny_png(src / "train" / "NORMAL" / "tiny.png")
    (src / "train" / "NORMAL" / "empty.jpeg").write_bytes(b"")
    return src


@pytest.fixture(scope="module")
def lakehouse(tmp_path_factory, source) -> Path:
    lh = tmp_path_factory.mktemp("lh")
    run_pipeline([source], lh, progress=False)
    return lh


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("cxrlake")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "cxrlake.cli"]


def _run(*args: str, stdin: str | None = None, env: dict | None = None):
    return subprocess.run(
        [*_cli(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )


def _assert_one_line_error(result, command: str, code: int = 1) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "panicked" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(f"cxrlake {command}: error: "), result.stderr
    return errors[0]


# ------------------------------------------------------------------ one SQL surface
def test_predict_is_the_spark_struct_under_the_databricks_names(lakehouse):
    from cxrlake.spark.udfs import PREDICT_RESULT

    result = query(
        lakehouse,
        "SELECT m.file_path, predict(m.file_path) AS p, "
        "healthcare_catalog_dev.bronze.predict(m.file_path).probability AS p3, "
        "healthcare_catalog_dev.models.predict_image(b.content).label_name AS from_bytes "
        "FROM healthcare_catalog_dev.silver.xray_metadata m "
        "JOIN bronze.kaggle_xray_metadata b USING (image_id) ORDER BY 1 LIMIT 4",
    )
    assert result.num_rows == 4
    assert [f.name for f in result.schema.field("p").type] == [f.name for f in PREDICT_RESULT]
    direct = cxrlake.predict(result.column("file_path").to_pylist())
    rows = result.column("p").to_pylist()
    assert [r["probability"] for r in rows] == pytest.approx(
        direct.column("probability").to_pylist(), abs=1e-9
    )
    assert result.column("p3").to_pylist() == [r["probability"] for r in rows]
    assert result.column("from_bytes").to_pylist() == [r["label_name"] for r in rows]
    assert all(r["error"] is None and r["model_name"] for r in rows)


@pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")
def test_the_same_query_runs_on_duckdb_and_spark_sql(lakehouse, tmp_path, monkeypatch):
    """One query written for Databricks (three-part names, predict(...).field) gives the same
    rows on the local engine and on Spark SQL over the same data."""
    pyspark = pytest.importorskip("pyspark")
    del pyspark
    from pyspark.sql import SparkSession

    from cxrlake.spark.udfs import register

    sql = (
        "SELECT m.label_name, count(*) AS n, "
        "sum(CASE WHEN predict(m.file_path).predicted_label = 1 THEN 1 ELSE 0 END) AS flagged, "
        "round(avg(predict(m.file_path).probability), 6) AS mean_p "
        "FROM healthcare_catalog_dev.silver.xray_metadata AS m "
        "JOIN healthcare_catalog_dev.gold.pneumonia_predictions AS g ON g.image_id = m.image_id "
        "WHERE m.dataset_split = 'train' AND m.label_name >= 'NORMAL' "
        "GROUP BY m.label_name ORDER BY m.label_name"
    )
    local = query(lakehouse, sql).to_pylist()
    assert [r["label_name"] for r in local] == ["NORMAL", "PNEUMONIA"]

    # Spark: the same Delta snapshots (read with delta-rs, as Arrow) as tables of a catalog
    # named like the Unity Catalog one. Delta-on-Spark jars are unavailable here, so the tables
    # live in Derby through Spark's JDBC catalog: a real catalog, three-part names and all.
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)  # workers need this venv
    spark = (
        SparkSession.builder.master("local[1]")
        .appName("cxrlake-same-sql")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .getOrCreate()
    )
    catalog = "spark.sql.catalog.healthcare_catalog_dev"
    for key, value in {
        "": "org.apache.spark.sql.execution.datasources.v2.jdbc.JDBCTableCatalog",
        ".url": f"jdbc:derby:memory:{tmp_path.name};create=true",
        ".driver": "org.apache.derby.jdbc.EmbeddedDriver",
        # Derby cannot compare long strings (CLOB): Spark evaluates every predicate itself.
        ".pushDownPredicate": "false",
        ".pushDownAggregate": "false",
    }.items():
        spark.conf.set(catalog + key, value)
    try:
        register(spark)
        for spec, columns in (
            (schemas.SILVER, ["image_id", "file_path", "label_name", "dataset_split"]),
            (schemas.PREDICTIONS, ["image_id"]),
        ):
            data = DeltaTable(spec.path(lakehouse)).to_pyarrow_table(columns=columns)
            data = data.cast(pa.schema([pa.field(c, pa.string()) for c in columns]))
            spark.sql(f"CREATE NAMESPACE IF NOT EXISTS healthcare_catalog_dev.{spec.schema_name}")
            spark.createDataFrame(data).writeTo(
                f"healthcare_catalog_dev.{spec.qualified_name}"
            ).create()
        remote = [r.asDict() for r in spark.sql(sql).collect()]
    finally:
        spark.stop()
    assert [{**r, "n": int(r["n"]), "flagged": int(r["flagged"])} for r in remote] == [
        {**r, "mean_p": pytest.approx(r["mean_p"], abs=1e-6)} for r in local
    ]


def test_string_filters_work_on_every_column_after_merge_compaction_and_merge(tmp_path):
    """Files written by MERGE hold string_view, files rewritten by compaction plain string:
    comparisons must work on both, in every table."""
    src = _source(tmp_path / "src", per_label=3)
    lh = tmp_path / "lh"
    run_pipeline([src], lh, progress=False)  # MERGE
    maintain(lh)  # compaction rewrites the files
    extra = sorted((DATA / "chest_xray" / "train" / "NORMAL").iterdir())[10]
    shutil.copyfile(extra, src / "train" / "NORMAL" / extra.name)
    run_pipeline([src], lh, progress=False)  # a second MERGE on top
    con = connect(lh, udfs=False)
    try:
        checked = 0
        for spec in schemas.TABLES:
            for field in spec.arrow_schema:
                if not (pa.types.is_string(field.type) or pa.types.is_string_view(field.type)):
                    continue
                name = f"{spec.qualified_name}"
                value = con.sql(f"SELECT min({field.name}) FROM {name}").fetchall()[0][0]
                if value is None:
                    continue
                for op in ("=", ">=", "<>"):
                    con.sql(
                        f"SELECT count(*) FROM {name} WHERE {field.name} {op} ?", params=[value]
                    ).fetchall()
                checked += 1
        n = con.sql(
            "SELECT count(*) FROM silver.xray_metadata WHERE label_name = 'PNEUMONIA'"
        ).fetchall()[0][0]
    finally:
        con.close()
    assert n == 3 and checked >= 20


def test_show_tables_lists_the_tables(lakehouse):
    got = query(lakehouse, "SHOW TABLES").to_pylist()
    names = {f"{r['database']}.{r['tableName']}" for r in got}
    assert {s.qualified_name for s in schemas.TABLES} <= names
    assert not any(n.startswith("__") or "__" in n for n in names)
    gold = query(lakehouse, "SHOW TABLES IN gold").column("tableName").to_pylist()
    assert "pneumonia_predictions" in gold and "xray_metadata" not in gold


def test_statements_are_split_outside_quotes_and_comments():
    script = "select 1; -- a ; comment\nselect ';' as x ; /* ; */ select 2 ;; "
    assert split_statements(script) == [
        "select 1",
        "-- a ; comment\nselect ';' as x",
        "/* ; */ select 2",
    ]


# ------------------------------------------------------------------ errors and sandbox
def test_image_error_uses_the_quarantine_words(lakehouse, source):
    reasons = {
        r["file_path"]: r["reason"]
        for r in query(lakehouse, "SELECT file_path, reason FROM silver.quarantine").to_pylist()
    }
    con = connect(lakehouse)
    try:
        for name in ("tiny.png", "empty.jpeg", "broken.jpeg"):
            path = str(source / "train" / "NORMAL" / name)
            got = con.sql("SELECT image_error(?)", params=[path]).fetchall()[0][0]
            assert got is not None and reasons[path].split(":")[0] == got.split(":")[0], name
        good = str(next((source / "train" / "PNEUMONIA").iterdir()))
        assert con.sql("SELECT image_error(?)", params=[good]).fetchall()[0][0] is None
    finally:
        con.close()
    assert "smaller than" in reasons[str(source / "train" / "NORMAL" / "tiny.png")]
    assert reasons[str(source / "train" / "NORMAL" / "empty.jpeg")].startswith("empty image data")


def test_sql_path_functions_read_only_the_lakehouse_sources(lakehouse, tmp_path, monkeypatch):
    monkeypatch.delenv("CXRLAKE_ALLOWED_ROOTS", raising=False)
    elsewhere = tmp_path / "elsewhere.jpeg"
    shutil.copyfile(next((DATA / "chest_xray" / "train" / "NORMAL").iterdir()), elsewhere)
    (tmp_path / "dir").mkdir()
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    inside = query(lakehouse, "SELECT min(file_path) AS f FROM silver.xray_metadata")
    inside_path = inside.column("f")[0].as_py()
    con = connect(lakehouse)
    try:
        # Whatever exists outside the roots, the answer is the same words.
        for outside in (
            "/etc/passwd",
            "/etc/passwd/x",
            str(elsewhere),
            str(tmp_path / "dir"),
            str(tmp_path / "missing.jpeg"),
            str(tmp_path / "dangling"),
        ):
            p, err = con.sql(
                "SELECT predict(?).probability, image_error(?)", params=[outside, outside]
            ).fetchall()[0]
            assert p is None and err == f"outside sandbox roots: {outside}", outside
        p, err = con.sql(
            "SELECT predict(?).probability, image_error(?)", params=[inside_path, inside_path]
        ).fetchall()[0]
        assert 0 <= p <= 1 and err is None
    finally:
        con.close()
    con = connect(lakehouse, roots=[str(tmp_path)])  # an explicit root opens it up
    try:
        prob = con.sql("SELECT predict(?).probability", params=[str(elsewhere)]).fetchall()[0][0]
    finally:
        con.close()
    assert 0 <= prob <= 1


@pytest.mark.parametrize("roots", [[], [""]])
def test_empty_roots_are_refused(lakehouse, roots):
    with pytest.raises(SandboxError, match="root"):
        connect(lakehouse, roots=roots)
    with pytest.raises(SandboxError):
        cxrlake.decode(["/etc/passwd"], roots=roots)


def test_cli_refuses_empty_roots(lakehouse):
    r = _run("sql", "--lakehouse", str(lakehouse), "--allowed-root", "", "SELECT 1")
    assert "empty" in _assert_one_line_error(r, "sql")
    r = _run("sql", "--lakehouse", str(lakehouse), "SELECT 1", env={"CXRLAKE_ALLOWED_ROOTS": ":"})
    assert "CXRLAKE_ALLOWED_ROOTS" in _assert_one_line_error(r, "sql")


def test_sql_cannot_touch_files_outside_the_functions(lakehouse, tmp_path):
    target = tmp_path / "written.csv"
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    image = next((DATA / "chest_xray" / "train" / "NORMAL").iterdir())
    con = connect(lakehouse, roots=[str(tmp_path)])
    try:
        for statement in (
            f"SELECT * FROM read_text('{secret}')",
            f"SELECT * FROM read_blob('{image}')",
            f"SELECT predict_bytes(content).probability FROM read_blob('{image}')",
            f"COPY (SELECT 1) TO '{target}'",
            f"ATTACH '{tmp_path / 'x.duckdb'}' AS x",
            f"SELECT * FROM read_csv('{secret}')",
            "SET enable_external_access = true",
            "SET allowed_directories = ['/']",
            "INSTALL httpfs",
        ):
            with pytest.raises(Exception, match="disabled|locked|Permission"):
                con.sql(statement)
    finally:
        con.close()
    assert not target.exists() and not (tmp_path / "x.duckdb").exists()


# ------------------------------------------------------------------ the sql command
def test_cli_sql_statements_file_stdin_and_formats(lakehouse, tmp_path):
    lh = str(lakehouse)
    both = _run(
        "sql", "--lakehouse", lh, "SELECT 1 AS a; SELECT count(*) AS n FROM silver.quarantine"
    )
    assert both.returncode == 0, both.stderr
    assert "a" in both.stdout.split("\n")[0] and "(1 row)" in both.stdout
    assert both.stdout.count("(1 row)") == 2  # each statement's result is printed
    script = tmp_path / "q.sql"
    script.write_text("-- two statements\nSELECT 1 AS a;\nSELECT 'x;y' AS b;\n")
    from_file = _run("sql", "--lakehouse", lh, "--format", "jsonl", "-f", str(script))
    assert from_file.stdout.splitlines() == ['{"a": 1}', '{"b": "x;y"}'], from_file.stderr
    piped = _run(
        "sql", "--lakehouse", lh, "--format", "json", stdin="SELECT 1 AS a UNION ALL SELECT 2"
    )
    assert json.loads(piped.stdout) == [{"a": 1}, {"a": 2}]
    dash = _run("sql", "--lakehouse", lh, "--format", "csv", "-f", "-", stdin="SELECT 3 AS c")
    assert dash.stdout.split() == ['"c"', "3"]
    out = tmp_path / "result.csv"
    written = _run("sql", "--lakehouse", lh, "--format", "csv", "--out", str(out), "SELECT 4 AS d")
    assert (
        written.returncode == 0 and written.stdout == "" and out.read_text().split() == ['"d"', "4"]
    )


def test_cli_sql_interactive_shell(lakehouse):
    """With no query the shell reads statements line by line (here from a pseudo-terminal)."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # child: the shell on a terminal
        os.execvp(_cli()[0], [*_cli(), "sql", "--lakehouse", str(lakehouse)])
    try:
        os.write(fd, b"SELECT 40 +\n2 AS answer;\nSELECT * FROM gold.nope;\n.quit\n")
        seen = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    text = seen.decode(errors="replace")
    assert "42" in text and "cxrlake sql: error:" in text and "nope" in text
    assert os.waitstatus_to_exitcode(status) == 0


def test_cli_sql_errors_are_one_line(lakehouse, tmp_path):
    bad = _run("sql", "--lakehouse", str(lakehouse), "SELECT * FROM gold.nope")
    assert "nope" in _assert_one_line_error(bad, "sql")
    missing = _run("sql", "--lakehouse", str(tmp_path / "nope"), "SELECT 1")
    assert "no lakehouse" in _assert_one_line_error(missing, "sql")
    assert not (tmp_path / "nope").exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "not a directory" in _assert_one_line_error(
        _run("sql", "--lakehouse", str(afile), "SELECT 1"), "sql"
    )
    blocked = _run("sql", "--lakehouse", str(lakehouse), "SELECT * FROM read_text('/etc/passwd')")
    assert "--out FILE" in _assert_one_line_error(blocked, "sql")
    refused = _run("sql", "--lakehouse", str(lakehouse), "SELECT image_error('/etc/passwd') AS e")
    assert refused.returncode == 0 and "--allowed-root" in refused.stderr


def test_cli_damaged_delta_log_is_one_line(lakehouse, tmp_path):
    lh = tmp_path / "damaged"
    shutil.copytree(lakehouse, lh)
    log = Path(schemas.SILVER.path(lh)) / "_delta_log"
    for commit in log.glob("*.json"):
        commit.write_text("{not json")
    r = _run("sql", "--lakehouse", str(lh), "SELECT count(*) FROM silver.xray_metadata")
    _assert_one_line_error(r, "sql")


def test_cli_disk_full_is_one_line(lakehouse):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    r = _run("report", "--lakehouse", str(lakehouse), "--out", "/dev/full")
    _assert_one_line_error(r, "report")


def _file_size_limit(limit: int):
    """preexec_fn: writes past ``limit`` bytes fail with EFBIG instead of raising SIGXFSZ."""

    def apply() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_cli_failed_delta_write_is_one_line_naming_the_table(fullres_paths, tmp_path):
    """A Delta write that fails on an OS error (here EFBIG from a file-size limit, the same path as
    a full disk) prints one line naming the table and the OS error, and no Rust panic report
    (object_store's upload task panics on the way: "panicked at ...: Already shut down")."""
    src = tmp_path / "src" / "NORMAL"
    src.mkdir(parents=True)
    for p in fullres_paths[:6]:  # bronze's parquet file is then larger than the limit
        shutil.copyfile(p, src / Path(p).name)
    lh = tmp_path / "lh"
    r = subprocess.run(
        [*_cli(), "pipeline", "run", "--source", str(src.parent), "--lakehouse", str(lh)],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=_file_size_limit(1 << 20),
        env={**os.environ, "RUST_BACKTRACE": "1"},
    )
    line = _assert_one_line_error(r, "pipeline run")
    assert line.startswith("cxrlake pipeline run: error: file too large: cannot write bronze"), line
    assert r.stderr.strip() == line, r.stderr
    assert DeltaTable(schemas.BRONZE.path(lh)).count() == 0  # the commit did not happen


def test_rust_panic_reports_are_kept_off_stderr_and_other_output_is_kept(capfd):
    """The stderr guard around Delta writes drops Rust panic reports (location, message,
    backtrace and notes) and passes everything else through, in order."""
    from cxrlake.lakehouse.storage import _stderr_without_rust_panics

    report = (
        "\nthread 'tokio-rt-worker' (1585) panicked at /x/object_store/src/buffered.rs:369:41:\n"
        "Already shut down\n"
        "stack backtrace:\n"
        "   0: rust_begin_unwind\n"
        "note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.\n"
    )
    panics: list[str] = []
    with _stderr_without_rust_panics(panics):
        os.write(2, b"a warning before\n")
        os.write(2, report.encode())
        os.write(2, b"a warning after\n")
    err = capfd.readouterr().err
    assert err == "a warning before\na warning after\n"
    assert len(panics) == 1 and "Already shut down" in panics[0] and "note:" in panics[0]


def test_cli_unwritable_lakehouse_is_one_line(source):
    r = _run("pipeline", "run", "--source", str(source), "--lakehouse", "/proc/self/cxrlake")
    _assert_one_line_error(r, "pipeline run")


# ------------------------------------------------------------------ maintain
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


def test_maintain_dry_run_changes_nothing_and_lists_files(lakehouse, tmp_path):
    lh = tmp_path / "copy"
    shutil.copytree(lakehouse, lh)
    # A data file a killed run left behind, older than the retention: VACUUM would delete it.
    orphan = Path(schemas.SILVER.path(lh)) / "part-00000-orphan.parquet"
    shutil.copyfile(next(Path(schemas.SILVER.path(lh)).glob("*.parquet")), orphan)
    old = time.time() - 30 * 24 * 3600
    os.utime(orphan, (old, old))
    history = {s.qualified_name: len(DeltaTable(s.path(lh)).history()) for s in schemas.TABLES}
    listing = sorted(str(p) for p in lh.rglob("*"))
    r = _run("maintain", "--lakehouse", str(lh), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "part-00000-orphan.parquet" in r.stdout and "nothing was changed" in r.stdout
    assert sorted(str(p) for p in lh.rglob("*")) == listing  # no file added or removed
    for spec in schemas.TABLES:
        assert len(DeltaTable(spec.path(lh)).history()) == history[spec.qualified_name]
    assert orphan.exists()


def test_maintain_on_a_missing_lakehouse_creates_nothing(tmp_path):
    r = _run("maintain", "--lakehouse", str(tmp_path / "nope"))
    assert "no lakehouse" in _assert_one_line_error(r, "maintain")
    assert not (tmp_path / "nope").exists()


# ------------------------------------------------------------------ report
def test_report_is_self_contained_without_patient_images_by_default(lakehouse, tmp_path):
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
    top = text[: text.index("id='overview'")]
    assert "contains no patient images" in top
    assert "data:image/png" not in text
    assert "smaller than" in text  # the quarantine list
    assert text.count("<svg") >= 4  # class balance, histogram, ROC, calibration
    assert "Confusion matrix" in text
    # the fixture's files carry the Kermany data set's names: its attribution, said so
    assert "CC BY 4.0" in text and "10.17632/rscbjbr9sj.2" in text
    assert "recognised from the file names" in text
    assert not re.search(r"(src|href)=['\"]https?://(?!doi\.org|creativecommons\.org)", text)
    assert "<script src" not in text and "<link" not in text


def test_report_thumbnails_are_opt_in_and_announced(lakehouse):
    text = build_report(lakehouse, thumbnails=True)
    top = text[: text.index("id='overview'")]
    assert "embeds downscaled patient images" in top
    examples = text.split("id='examples'", 1)[1].split("<h2", 1)[0]
    thumbs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", examples)
    assert 1 <= len(thumbs) <= 8
    assert base64.b64decode(thumbs[0]).startswith(b"\x89PNG\r\n\x1a\n")


def test_report_attribution_comes_from_the_data(tmp_path):
    src = tmp_path / "hospital"
    for i, image in enumerate(sorted((DATA / "chest_xray" / "train" / "NORMAL").iterdir())[:2]):
        (src / "train" / "NORMAL").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, src / "train" / "NORMAL" / f"study-{i}.jpeg")
    lh = tmp_path / "lh"
    run_pipeline([src], lh, progress=False)
    own = build_report(lh, examples=0)
    assert "Kermany" not in own and "No attribution is recorded" in own
    (src / "ATTRIBUTION.txt").write_text("Images: St Example Hospital, used with permission.")
    credited = build_report(lh, examples=0)
    assert "St Example Hospital" in credited and "Kermany" not in credited
    named = tmp_path / "credit.txt"
    named.write_text("Images <b>courtesy</b> of https://example.org/data")
    explicit = build_report(lh, examples=0, attribution_files=[str(named)])
    assert "&lt;b&gt;courtesy" in explicit and '<a href="https://example.org/data">' in explicit


def test_report_refuses_negative_examples(lakehouse):
    with pytest.raises(ValueError, match=">= 0"):
        build_report(lakehouse, examples=-1)
    r = _run("report", "--lakehouse", str(lakehouse), "--examples", "-1")
    assert r.returncode == 2 and "--examples" in r.stderr


def test_chart_ticks_are_even_and_distinct():
    assert count_ticks(0) == [0, 1]
    assert count_ticks(3) == [0, 1, 2, 3]
    for top in (1, 7, 41, 113, 124, 999, 3875, 123456):
        ticks = count_ticks(top)
        steps = {b - a for a, b in zip(ticks, ticks[1:], strict=False)}
        assert len(steps) == 1 and ticks[0] == 0 and ticks[-1] >= top and len(ticks) <= 6, top
        assert str(next(iter(steps)))[0] in "125", ticks

    def labels(svg: str) -> list[str]:
        return re.findall(r'text-anchor="end">([^<]*)<', svg)

    assert labels(bar_chart([], {"NORMAL": [], "PNEUMONIA": []}, "empty")) == ["0", "1"]
    assert labels(histogram([], "empty")) == ["0", "1"]
    assert labels(bar_chart(["train"], {"NORMAL": [41], "PNEUMONIA": [113]}, "uneven")) == [
        "0",
        "50",
        "100",
        "150",
    ]


def test_charts_are_the_same_text_for_the_same_data():
    def draw() -> list[str]:
        return [
            bar_chart(["test", "train"], {"NORMAL": [3, 9], "PNEUMONIA": [5, 0]}, "bars"),
            histogram([0.1, 0.5, 0.52, 0.99], "quality"),
            unit_plot(
                "ROC", "fpr", "tpr", [([(0.0, 0.0), (0.5, 0.9), (1.0, 1.0)], "#e34a33", "o")]
            ),
            time_series("PSI", "PSI", ["2026-01-01", "2026-01-02"], {"site": [0.1, None]}),
        ]

    first = draw()
    assert first == draw()
    assert all(svg.startswith("<svg ") and svg.endswith("</svg>") for svg in first)
    assert first[2].count("<circle") == 3 and "<polyline" in first[2]
    assert first[3].count("<circle") == 1  # a missing value is a gap


def test_thumbnails_are_downscaled_grayscale_pngs():
    from PIL import Image

    pixels = bytes(range(256)) * 200  # 256 x 200, a horizontal ramp
    small = thumbnail(pixels, 256, 200, max_side=64)
    assert small.shape == (50, 64) and small.dtype.name == "uint8"
    decoded = Image.open(io.BytesIO(png_gray(small)))
    assert decoded.mode == "L" and decoded.size == (64, 50)
    assert decoded.tobytes() == small.tobytes()


def test_format_result_formats(lakehouse):
    t = query(
        lakehouse, "SELECT filename, content FROM bronze.kaggle_xray_metadata ORDER BY 1 LIMIT 2"
    )
    text = format_result(t, "table")
    assert "filename" in text and "bytes>" in text and "(2 rows)" in text
    csv = format_result(t, "csv").splitlines()
    assert csv[0] == '"filename","content"' and len(csv) == 3
    array = json.loads(format_result(t, "json"))
    assert len(array) == 2 and array[0]["content"].endswith("bytes>")
    lines = [json.loads(line) for line in format_result(t, "jsonl").splitlines()]
    assert lines == array
    with pytest.raises(ValueError, match="unknown format"):
        format_result(t, "xml")


def _documented_nested_queries() -> str:
    """The SQL block of docs/lakehouse.md that says it runs in all four formats."""
    text = (REPO / "docs" / "lakehouse.md").read_text()
    after = text.split("run in all four formats", 1)[1]
    return after.split("```sql\n", 1)[1].split("```", 1)[0]


def test_cli_sql_prints_nested_values_in_every_format(lakehouse, tmp_path):
    import csv
    import io

    script = tmp_path / "nested.sql"
    script.write_text(_documented_nested_queries())
    lh = str(lakehouse)
    outputs = {}
    for fmt in ("table", "csv", "json", "jsonl"):
        result = _run("sql", "--lakehouse", lh, "--format", fmt, "-f", str(script))
        assert result.returncode == 0, (fmt, result.stderr)
        outputs[fmt] = result.stdout
    # csv: one header + rows per statement; nested cells are JSON text
    cells = [row for row in csv.reader(io.StringIO(outputs["csv"])) if row]
    by_header = {}
    header = None
    for row in cells:
        if row[0] in ("file_path", "image_id", "filename"):
            header = tuple(row)
            continue
        by_header.setdefault(header, []).append(dict(zip(header, row, strict=True)))
    predicted = by_header[("file_path", "p")]
    assert len(predicted) == 2 and "probability" in json.loads(predicted[0]["p"])
    explained = json.loads(by_header[("file_path", "e")][0]["e"])
    assert explained["heatmap"] is None or len(explained["heatmap"]["values"]) == (
        explained["heatmap"]["rows"] * explained["heatmap"]["cols"]
    )
    maps = [json.loads(r["heatmap"]) for r in by_header[("image_id", "heatmap")] if r["heatmap"]]
    assert maps and all(m["rows"] * m["cols"] == len(m["values"]) for m in maps)
    assert by_header[("filename", "png")][0]["png"].endswith(" bytes>")
    # json and jsonl: nested objects, bytes as <N bytes>
    rows = [json.loads(line) for line in outputs["jsonl"].splitlines()]
    assert isinstance(rows[0]["p"], dict) and "probability" in rows[0]["p"]
    assert any(isinstance(r.get("heatmap"), dict) for r in rows)
    assert [r["png"] for r in rows if "png" in r][0].endswith(" bytes>")
    arrays = re.findall(r"^\[.*?^\]", outputs["json"], re.MULTILINE | re.DOTALL)
    assert [row for array in arrays for row in json.loads(array)] == rows
    assert "probability: " in outputs["table"] and outputs["table"].count("row") >= 4


def test_cli_sql_counts_and_bad_arguments(lakehouse):
    ok = _run(
        "sql",
        "--lakehouse",
        str(lakehouse),
        "--format",
        "csv",
        "SELECT count(*) AS n FROM gold.pneumonia_predictions",
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ['"n"', "16"]
    usage = _run(
        "pipeline",
        "run",
        "--source",
        "/nonexistent",
        "--lakehouse",
        str(lakehouse),
        "--sample-per-label",
        "0",
    )
    assert usage.returncode == 2 and "positive integer" in usage.stderr


def test_pipeline_run_on_a_source_without_images_creates_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("not an image")
    r = _run("pipeline", "run", "--source", str(src), "--lakehouse", str(tmp_path / "lh"))
    assert "no image files" in _assert_one_line_error(r, "pipeline run")
    assert not (tmp_path / "lh").exists()
