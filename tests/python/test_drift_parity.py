"""`rules.DRIFT_METRICS`, the one rule behind ``gold.drift_metrics``: DuckDB (local engine) and
Spark SQL (Databricks engine) return the same rows from the same views, the PSI is the textbook
one, and rows already in the table are not returned again."""

from __future__ import annotations

import datetime as dt
import math
import os
import sys

import duckdb
import pyarrow as pa
import pytest

from cxrlake.medallion import rules, schemas

pytestmark = pytest.mark.filterwarnings(
    "ignore:PySpark does not yet fully support pandas >= 3.0.0:FutureWarning"
)

REFERENCE = {
    "probability_bins": [0.3, 0.05, 0.0, 0.0, 0.05, 0.05, 0.05, 0.05, 0.1, 0.35],
    "positive_rate": 0.6,
    "quality_mean": 0.7,
    "quality_std": 0.05,
}


def _views() -> dict[str, pa.Table]:
    day1, day2 = dt.date(2026, 1, 5), dt.date(2026, 1, 6)
    rows = []
    probabilities = [0.02, 0.15, 0.97, 0.999, 1.0, 0.5, 0.42, 0.08, 0.91, 0.33]
    for i, p in enumerate(probabilities):
        rows.append(
            {
                "image_id": f"img{i}",
                "content_sha256": f"sha{i}",
                "model_name": "m",
                "model_version": "2" if i < 9 else "1",  # one row of an earlier model
                "dataset_split": "site-a" if i % 3 else "site-b",
                "prediction_date": day1 if i < 6 else day2,
                "prediction_probability": p,
                "predicted_label": int(p >= 0.45),
                "out_of_distribution": i in (2, 7),
                "ood_score": 0.5 + i / 10,
            }
        )
    rows.append({**rows[0], "image_id": "failed", "prediction_probability": None})
    predictions = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [schemas.GOLD_PREDICTIONS.field(c) for c in rules.DRIFT_PREDICTION_COLUMNS]
        ),
    )
    silver = pa.table(
        {
            "image_id": [f"img{i}" for i in range(10)],
            "content_sha256": [f"sha{i}" for i in range(10)],
            "quality_score": [0.6 + i / 50 for i in range(10)],
        }
    )
    return {
        "predictions": predictions,
        "silver": silver,
        "model": rules.model_row("m", "2", "tag"),
        "drift_reference": rules.drift_reference_rows("m", "2", REFERENCE),
        "drift": schemas.GOLD_DRIFT_METRICS.empty_table(),
    }


def _duckdb(views: dict[str, pa.Table]) -> list[dict]:
    con = duckdb.connect()
    for name, table in views.items():
        con.register(name, table)
    return con.sql(rules.DRIFT_METRICS).to_arrow_table().to_pylist()


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master("local[1]")
        .appName("cxrlake-drift-parity")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    yield session
    session.stop()


def test_duckdb_drift_rows_are_the_textbook_figures():
    rows = _duckdb(_views())
    keys = [(r["site_id"], str(r["run_date"])) for r in rows]
    assert keys == sorted(keys) and len(rows) == 4  # 2 sites x 2 days, model 2 only
    row = next(r for r in rows if r["site_id"] == "site-a" and str(r["run_date"]) == "2026-01-05")
    films = [0.15, 0.97, 1.0, 0.5]  # img1, img2, img4, img5
    assert row["film_count"] == 4 and row["flagged_count"] == 1
    assert row["positive_rate"] == pytest.approx(3 / 4)
    assert row["mean_probability"] == pytest.approx(sum(films) / 4)
    counts = [0] * 10
    for p in films:
        counts[min(int(p * 10), 9)] += 1
    expected = sum(
        (max(c / 4, 1e-4) - max(e, 1e-4)) * math.log(max(c / 4, 1e-4) / max(e, 1e-4))
        for c, e in zip(counts, REFERENCE["probability_bins"], strict=True)
    )
    assert row["probability_psi"] == pytest.approx(expected, abs=1e-8)
    quality = sum(0.6 + i / 50 for i in (1, 2, 4, 5)) / 4
    assert row["quality_shift"] == pytest.approx((quality - 0.7) / 0.05, abs=1e-8)


def test_rows_already_stored_are_not_returned_again():
    views = _views()
    first = _duckdb(views)
    stored = pa.Table.from_pylist(
        [{**r, "computed_at": dt.datetime(2026, 1, 7, tzinfo=dt.timezone.utc)} for r in first],
        schema=schemas.GOLD_DRIFT_METRICS,
    )
    assert _duckdb({**views, "drift": stored}) == []
    # no reference shipped with the model: the PSI and the quality shift are NULL
    no_reference = {**views, "drift_reference": rules.drift_reference_rows("m", "2", None)}
    assert {r["probability_psi"] for r in _duckdb(no_reference)} == {None}


def test_spark_sql_returns_the_same_drift_rows(spark):
    from cxrlake.spark.schemas import to_spark_schema

    views = _views()
    for name, table in views.items():
        spark.createDataFrame(
            table.to_pylist(), to_spark_schema(table.schema)
        ).createOrReplaceTempView(name)
    ours = spark.sql(rules.DRIFT_METRICS).collect()
    got = [r.asDict() for r in ours]
    assert got == _duckdb(views)
