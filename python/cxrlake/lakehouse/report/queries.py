"""The report's data: each function runs one query over a `cxrlake.lakehouse.sql.connect`
connection and returns an Arrow table (empty, with the right columns, when a table is absent)."""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa

from cxrlake.medallion import schemas
from cxrlake.medallion.schemas import DRIFT_METRICS

Row = dict[str, Any]
"""One row of a query's Arrow table as Python values (``to_pylist``; pyarrow is untyped, so the
values are the boundary's)."""


def has_table(con: duckdb.DuckDBPyConnection, qualified: str) -> bool:
    """Whether ``<schema>.<table>`` exists (as a view or a table) in the lakehouse catalog."""
    schema_name, name = qualified.split(".")
    sql = (
        "SELECT count(*) FROM (SELECT database_name, schema_name, view_name AS name "
        "FROM duckdb_views() UNION ALL SELECT database_name, schema_name, table_name "
        "FROM duckdb_tables()) WHERE database_name = current_database() AND schema_name = ? "
        "AND name = ?"
    )
    return bool(con.sql(sql, params=[schema_name, name]).fetchall()[0][0])


def _query(
    con: duckdb.DuckDBPyConnection, needs: str, sql: str, empty: dict[str, pa.DataType]
) -> pa.Table:
    if not has_table(con, needs):
        return pa.schema(list(empty.items())).empty_table()
    return con.sql(sql).to_arrow_table()


def table_counts(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """``table``, ``rows`` of every lakehouse table (0 when absent)."""
    names, counts = [], []
    for spec in schemas.TABLES:
        names.append(spec.qualified_name)
        n = 0
        if has_table(con, spec.qualified_name):
            n = con.sql(f"SELECT count(*) FROM {spec.qualified_name}").fetchall()[0][0]
        counts.append(n)
    return pa.table({"table": names, "rows": pa.array(counts, pa.int64())})


def silver_images(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """``dataset_split``, ``label_name``, ``quality_score``, ``filename`` of silver images."""
    return _query(
        con,
        "silver.xray_metadata",
        "SELECT dataset_split, label_name, quality_score, filename FROM silver.xray_metadata",
        {
            "dataset_split": pa.string(),
            "label_name": pa.string(),
            "quality_score": pa.float64(),
            "filename": pa.string(),
        },
    )


def latest_performance(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """The latest `gold.model_performance` row per (model, version, split)."""
    return _query(
        con,
        "gold.model_performance",
        "SELECT * FROM gold.model_performance QUALIFY row_number() OVER (PARTITION BY "
        "model_name, model_version, dataset_split ORDER BY evaluated_at DESC, evaluation_id) "
        "= 1 ORDER BY model_name, model_version, dataset_split",
        {"model_name": pa.string(), "model_version": pa.string(), "dataset_split": pa.string()},
    )


def predictions(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Gold predictions joined to their silver image (current version)."""
    if not has_table(con, "silver.xray_metadata"):
        return pa.table({})
    return _query(
        con,
        "gold.pneumonia_predictions",
        "SELECT p.* FROM gold.pneumonia_predictions p JOIN silver.xray_metadata m"
        " ON p.image_id = m.image_id AND p.content_sha256 = m.content_sha256",
        {},
    )


def quarantine(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """``image_id``, ``stage``, ``reason``, ``quarantined_at`` of quarantined files."""
    return _query(
        con,
        "silver.quarantine",
        "SELECT image_id, stage, reason, quarantined_at FROM silver.quarantine "
        "ORDER BY quarantined_at, image_id",
        {"image_id": pa.string(), "stage": pa.string(), "reason": pa.string()},
    )


def dataset_summary(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """The `gold.dataset_summary` view."""
    return _query(
        con, schemas.DATASET_SUMMARY_VIEW, f"SELECT * FROM {schemas.DATASET_SUMMARY_VIEW}", {}
    )


def image_bytes(
    con: duckdb.DuckDBPyConnection, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], bytes]:
    """Bronze bytes of the given ``(image_id, content_sha256)`` pairs."""
    if not keys or not has_table(con, "bronze.kaggle_xray_metadata"):
        return {}
    con.execute("CREATE TEMP TABLE __wanted(image_id VARCHAR, content_sha256 VARCHAR)")
    try:
        con.executemany("INSERT INTO __wanted VALUES (?, ?)", keys)
        rows = con.sql(
            "SELECT b.image_id, b.content_sha256, any_value(b.content) AS content "
            "FROM bronze.kaggle_xray_metadata b JOIN __wanted w USING (image_id, content_sha256) "
            "GROUP BY ALL"
        ).to_arrow_table()
    finally:
        con.execute("DROP TABLE __wanted")
    return {(r["image_id"], r["content_sha256"]): r["content"] for r in rows.to_pylist()}


def drift_metrics(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """`gold.drift_metrics` ordered by model version, site and run date."""
    return _query(
        con,
        "gold.drift_metrics",
        "SELECT * FROM gold.drift_metrics ORDER BY model_name, model_version, site_id, run_date",
        {f.name: f.type for f in DRIFT_METRICS.arrow_schema},
    )
