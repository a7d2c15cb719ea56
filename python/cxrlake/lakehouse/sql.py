"""DuckDB over the lakehouse's Delta tables, with the Rust UDFs as SQL functions.

DuckDB's own ``delta`` extension downloads itself at run time, so tables are read through delta-rs
instead: each table's current snapshot becomes a pyarrow dataset (projection and filter pushdown),
exposed as a view ``<schema>.<table>`` (``bronze.kaggle_xray_metadata``,
``gold.pneumonia_predictions`` ...). The connection is a read snapshot: reopen it to see later
commits.

SQL functions (Arrow-vectorised; DuckDB hands them up to 2048 rows at a time; a NULL or unreadable
image gives NULL). Each takes a file path (VARCHAR); the ``*_bytes`` variant takes image bytes
(BLOB, e.g. ``bronze.kaggle_xray_metadata.content``):

- ``predict(path) -> DOUBLE``: P(PNEUMONIA) from the default (or given) model.
- ``predict_label(path) -> INTEGER``: 0 = NORMAL, 1 = PNEUMONIA (model threshold).
- ``quality_score(path) -> DOUBLE``: image quality score, 0..1.
- ``image_error(path) -> VARCHAR``: why an image cannot be read, NULL when it can.
"""

from __future__ import annotations

import os
from typing import Any

import duckdb
import pyarrow as pa

from cxrlake.lakehouse import schemas
from cxrlake.lakehouse.storage import Lakehouse

OUTPUT_FORMATS = ("table", "csv", "json")


ROOTS_ENV = "CXRLAKE_ALLOWED_ROOTS"


def default_roots(lh: Lakehouse) -> list[str] | None:
    """Sandbox roots for path arguments of the SQL functions.

    None (the core then reads env ``CXRLAKE_ALLOWED_ROOTS``) when that variable is set; else the
    lakehouse root plus every source folder a pipeline run has read from, so ``predict(path)``
    reads the lakehouse's own images and nothing else.
    """
    if os.environ.get(ROOTS_ENV):
        return None
    return [lh.root, *(s for s in lh.recorded_sources() if os.path.isdir(s))]


def _register_udfs(con: duckdb.DuckDBPyConnection, model: Any, roots: list[str] | None) -> None:
    import cxrlake

    model = model if isinstance(model, cxrlake.Model) else cxrlake.Model(model)

    def column(fn: Any, name: str):
        def udf(images: pa.Array) -> pa.Array:
            return fn(images, model=model, roots=roots).column(name)

        return udf

    # DuckDB Python UDFs cannot be overloaded by argument type: bytes variants get a suffix.
    functions = [
        ("predict", cxrlake.predict, "probability", "DOUBLE"),
        ("predict_label", cxrlake.predict, "predicted_label", "INTEGER"),
        ("quality_score", _quality, "quality_score", "DOUBLE"),
        ("image_error", _decode, "error", "VARCHAR"),
    ]
    for name, fn, col, return_type in functions:
        for suffix, arg_type in (("", "VARCHAR"), ("_bytes", "BLOB")):
            con.create_function(
                name + suffix,
                column(fn, col),
                [arg_type],
                return_type,
                type="arrow",
                # rows the core cannot read come back NULL (SPECIAL lets a UDF return NULLs)
                null_handling="special",
            )


def _quality(images: pa.Array, model: Any, roots: list[str] | None) -> pa.RecordBatch:
    import cxrlake

    return cxrlake.features(images, model=model, embedding=False, roots=roots)


def _decode(images: pa.Array, model: Any, roots: list[str] | None) -> pa.RecordBatch:
    import cxrlake

    return cxrlake.decode(images, roots=roots)


def connect(
    lakehouse: str | os.PathLike,
    env: str = "dev",
    model: Any = None,
    udfs: bool = True,
    roots: list[str] | None = None,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with every existing table as ``<schema>.<table>`` view.

    Also defines the view ``gold.dataset_summary`` (when silver exists) and, with ``udfs``, the
    SQL functions listed in the module docstring (``model``: `cxrlake.Model`, path or None).
    ``roots``: folders the functions may read paths from (default: `default_roots`); a path
    elsewhere gives NULL (``image_error`` says ``outside sandbox roots``).
    Close it when done (``con.close()`` or ``with``).
    """
    lh = Lakehouse(lakehouse, env)
    if not os.path.isdir(lh.catalog):
        raise FileNotFoundError(
            f"no lakehouse at {lh.catalog}: run `cxrlake pipeline run --lakehouse {lh.root}` first"
        )
    con = duckdb.connect()
    try:
        for schema_name in ("bronze", "silver", "gold"):
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema_name}")
        for spec in schemas.TABLES:
            if not lh.exists(spec):
                continue
            source = f"__delta_{spec.schema_name}_{spec.name}"
            con.register(source, lh.dataset(spec))
            con.execute(f"CREATE VIEW {spec.qualified_name} AS SELECT * FROM {source}")
        if lh.exists(schemas.SILVER):
            con.execute(
                f"CREATE VIEW {schemas.DATASET_SUMMARY_VIEW} AS {schemas.DATASET_SUMMARY_SQL}"
            )
        if udfs:
            _register_udfs(con, model, default_roots(lh) if roots is None else roots)
    except BaseException:
        con.close()
        raise
    return con


def query(
    lakehouse: str | os.PathLike,
    sql: str,
    env: str = "dev",
    model: Any = None,
    roots: list[str] | None = None,
) -> pa.Table:
    """Run one SQL statement over the lakehouse and return the result as an Arrow table."""
    con = connect(lakehouse, env, model, roots=roots)
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def format_result(table: pa.Table, fmt: str = "table", max_width: int = 60) -> str:
    """Render a query result as an aligned text table, CSV or JSON lines."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(OUTPUT_FORMATS)}")
    if fmt == "csv":
        import io

        import pyarrow.csv as pacsv

        buf = io.BytesIO()
        pacsv.write_csv(_printable(table), buf)
        return buf.getvalue().decode("utf-8").rstrip("\n")
    if fmt == "json":
        import json

        return "\n".join(json.dumps(row, default=str) for row in _printable(table).to_pylist())
    names = table.column_names
    rows = [[_cell(v, max_width) for v in row.values()] for row in table.to_pylist()]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    line = " | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))
    out = [line, "-+-".join("-" * w for w in widths)]
    out += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def _printable(table: pa.Table) -> pa.Table:
    """Binary columns as ``<N bytes>`` (CSV and JSON cannot hold raw bytes)."""
    cols = []
    for col in table.columns:
        if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
            cols.append(
                pa.array([None if v is None else f"<{len(v)} bytes>" for v in col.to_pylist()])
            )
        else:
            cols.append(col)
    return pa.table(cols, names=table.column_names)


def _cell(value: Any, max_width: int) -> str:
    if value is None:
        text = "NULL"
    elif isinstance(value, bytes):
        text = f"<{len(value)} bytes>"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    return text if len(text) <= max_width else text[: max_width - 3] + "..."
