"""`cxrlake sql` writes no file and reads none but through the sandboxed functions.

Every statement below runs on the locked connection, aimed once at a table's own folders (where
DuckDB's ``allowed_directories`` used to grant write as well as read) and once outside the
lakehouse; afterwards no file under the lakehouse, the outside folder, the working directory or
``~/.duckdb`` has appeared, changed or gone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb
import pytest

from cxrlake.lakehouse.pipeline import run_pipeline
from cxrlake.lakehouse.sql import connect

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("CXRLAKE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="module")
def lakehouse(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for label in ("NORMAL", "PNEUMONIA"):
        (src / "train" / label).mkdir(parents=True)
        for name in sorted(os.listdir(DATA / "chest_xray" / "train" / label))[:2]:
            shutil.copyfile(
                DATA / "chest_xray" / "train" / label / name, src / "train" / label / name
            )
    lh = tmp_path_factory.mktemp("lh")
    run_pipeline([src], lh, progress=False)
    return lh


def _snapshot(*folders: Path) -> dict[str, tuple[int, int, int]]:
    """(size, mtime ns, inode) of every file and folder under ``folders``."""
    seen = {}
    for folder in folders:
        if not folder.exists():
            seen[str(folder)] = (-1, -1, -1)
            continue
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in [*dirnames, *filenames]:
                st = os.lstat(os.path.join(dirpath, name))
                seen[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return seen


def _attacks(table: Path, outside: Path, image: Path) -> list[str]:
    """Statements that would write, read or re-open file access, aimed at ``table`` (a Delta
    table folder) and at ``outside``."""
    log = table / "_delta_log"
    parquet = next(table.glob("*.parquet"))
    statements = []
    for where in (log, table, outside):
        statements += [
            f"COPY (SELECT 1 AS a) TO '{where / '00000000000000000099.json'}' (FORMAT csv)",
            f"COPY (SELECT 1 AS a) TO '{where / 'x.parquet'}' (FORMAT parquet)",
            f"COPY (SELECT 1 AS a) TO '{where / 'part'}' (FORMAT parquet, PARTITION_BY (a))",
            f"ATTACH '{where / 'x.duckdb'}' AS x",
            f"ATTACH '{where / 'x.sqlite'}' AS y (TYPE sqlite)",
            f"EXPORT DATABASE '{where / 'export'}'",
            f"IMPORT DATABASE '{where}'",
            f"INSTALL httpfs FROM '{where}'",
            f"LOAD '{where / 'x.duckdb_extension'}'",
            f"SET temp_directory = '{where}'",
            f"SET secret_directory = '{where}'",
            f"SET extension_directory = '{where}'",
            f"SET log_query_path = '{where / 'q.log'}'",
            f"SET profiling_output = '{where / 'p.json'}'",
            f"SET allowed_directories = ['{where}']",
            f"SET allowed_paths = ['{where / 'x.csv'}']",
            f"SELECT * FROM glob('{where}/*')",
        ]
    statements += [
        # reading the tables' files directly (the only reads are the sandboxed functions')
        f"SELECT * FROM read_parquet('{parquet}')",
        f"SELECT * FROM read_text('{log / '00000000000000000000.json'}')",
        f"SELECT * FROM read_blob('{parquet}')",
        f"SELECT * FROM read_csv('{log / '00000000000000000000.json'}')",
        f"SELECT * FROM read_json('{log / '00000000000000000000.json'}')",
        f"SELECT * FROM parquet_metadata('{parquet}')",
        f"SELECT * FROM sniff_csv('{log / '00000000000000000000.json'}')",
        f"SELECT * FROM read_blob('{image}')",
        f"CREATE TABLE c AS SELECT 1 AS a; COPY c FROM '{parquet}'",
        "COPY (SELECT 1 AS a) TO 'relative.csv'",
        "ATTACH 'relative.duckdb' AS r",
        "EXPORT DATABASE 'relative_export'",
        # persistent secrets, extensions, settings
        "CREATE PERSISTENT SECRET p (TYPE s3, KEY_ID 'k', SECRET 's')",
        "INSTALL httpfs",
        "FORCE INSTALL json",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "RESET enable_external_access",
        "SET disabled_filesystems = ''",
        "RESET disabled_filesystems",
        "SET lock_configuration = false",
        "RESET lock_configuration",
        "RESET ALL",
        "SET python_enable_replacements = true",
        "SET autoinstall_known_extensions = true",
        "SET allow_persistent_secrets = true",
        "SET allow_unsigned_extensions = true",
        "SET GLOBAL enable_external_access = true",
        "PRAGMA enable_profiling",
        "CALL enable_logging()",
    ]
    return statements


def test_no_statement_writes_or_reads_a_file(lakehouse, tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    table = lakehouse / "healthcare_catalog_dev" / "gold" / "pneumonia_predictions"
    image = next((DATA / "chest_xray" / "train" / "NORMAL").iterdir())
    home_duckdb = Path.home() / ".duckdb"
    before = _snapshot(lakehouse, outside, cwd, home_duckdb)
    con = connect(lakehouse, udfs=False)
    succeeded = []
    try:
        for statement in _attacks(table, outside, image):
            for part in statement.split("; "):
                try:
                    relation = con.sql(part)
                    if relation is not None:
                        relation.fetchall()  # a SELECT runs only when fetched
                except duckdb.Error:
                    continue
                if not part.startswith("CREATE TABLE"):
                    succeeded.append(part)
        # the connection still reads the tables, and only as the locked configuration allows
        rows = con.sql("SELECT count(*) FROM gold.pneumonia_predictions").fetchall()[0][0]
        settings = dict(
            con.sql(
                "SELECT name, value FROM duckdb_settings() WHERE name IN "
                "('enable_external_access', 'lock_configuration', 'temp_directory', "
                "'allowed_directories')"
            ).fetchall()
        )
    finally:
        con.close()
    assert succeeded == []
    assert rows == 4
    assert settings == {
        "enable_external_access": "false",
        "lock_configuration": "true",
        "temp_directory": "",
        "allowed_directories": "[]",
    }
    assert _snapshot(lakehouse, outside, cwd, home_duckdb) == before
