"""The champion/challenger comparison on Databricks, from the endpoint's AI Gateway inference table.

`serving_comparison` reads ``<gold>.pneumonia_serving_payload`` (the table the bundle's
``model_serving_endpoints.pneumonia_serving`` has the AI Gateway write), turns each answered
request into one row per image with `cxrlake.medallion.serving.inference_rows` inside
``mapInArrow`` (the sha256 of the base64 bytes is computed on the workers; no image leaves
them), runs the same `cxrlake.medallion.serving.COMPARISON` SQL as `cxrlake promote` runs in
DuckDB, and MERGEs ``<gold>.champion_challenger_comparison`` on (model_name, model_version).
`promote` then moves the Unity Catalog alias.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cxrlake.medallion import schemas as lake_schemas
from cxrlake.medallion import serving as tables
from cxrlake.spark import parameters, sql_files
from cxrlake.spark.catalog import SparkCatalog
from cxrlake.spark.deployment import Deployment
from cxrlake.spark.frames import materialise
from cxrlake.spark.parameters import validate_principal
from cxrlake.spark.schemas import to_spark_schema

PAYLOAD_COLUMNS = (
    "databricks_request_id",
    "request_time",
    "status_code",
    "served_entity_id",
    "request",
    "response",
)


def _rows(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        yield from tables.inference_rows(batch).to_batches()


def decide_comparison(
    spark: SparkSession,
    payload: DataFrame,
    feedback: DataFrame,
    predictions: DataFrame,
    now: dt.datetime | None = None,
) -> DataFrame:
    """The comparison rows (a DataFrame in `tables.GOLD_COMPARISON` order) from the inference
    table ``payload``, ``gold.prediction_feedback`` and ``gold.pneumonia_predictions``
    DataFrames: the rule `cxrlake promote` runs in DuckDB, in Spark SQL."""
    rows = (
        payload.where("status_code = 200")
        .select(*PAYLOAD_COLUMNS)
        .mapInArrow(_rows, to_spark_schema(tables.INFERENCE_ROWS))
    )
    # the rule reads the rows five times: parse the JSON once
    materialise(rows).createOrReplaceTempView("inference_rows")
    feedback.select(*tables.COMPARISON_FEEDBACK_COLUMNS).createOrReplaceTempView("feedback")
    predictions.select(*tables.COMPARISON_PREDICTION_COLUMNS).createOrReplaceTempView("predictions")
    computed_at = now or dt.datetime.now(dt.timezone.utc)
    result = spark.sql(tables.COMPARISON).withColumn("computed_at", F.lit(computed_at))
    return result.select(*tables.GOLD_COMPARISON.names)


def serving_comparison(
    spark: SparkSession, names: Deployment, now: dt.datetime | None = None
) -> DataFrame | None:
    """Compute the comparison from the deployed tables and MERGE it into
    ``<gold>.champion_challenger_comparison``; returns the table as a DataFrame (None when the
    endpoint has logged nothing yet)."""
    catalog = SparkCatalog(spark, names)
    payload = names.table(f"gold.{tables.PAYLOAD_TABLE}")
    if not spark.catalog.tableExists(payload):
        return None
    frames = {}
    for view, spec in (
        ("feedback", lake_schemas.FEEDBACK),
        ("predictions", lake_schemas.PREDICTIONS),
    ):
        if catalog.exists(spec):
            frames[view] = catalog.frame(spec)
        else:  # the review tables may not exist yet: no verdicts
            frames[view] = spark.createDataFrame([], to_spark_schema(spec.arrow_schema))
    result = decide_comparison(
        spark, spark.table(payload), frames["feedback"], frames["predictions"], now
    )
    catalog.ensure(tables.COMPARISON_TABLE)
    catalog.merge_frame(tables.COMPARISON_TABLE, result, operation="serving-comparison")
    return catalog.frame(tables.COMPARISON_TABLE)


def promote(names: Deployment, version: str, alias: str = "champion") -> str:
    """Move ``<catalog>.<models>.<registered model>@alias`` to ``version`` in Unity Catalog."""
    import mlflow  # optional extra: only the Databricks serving job needs it

    if not version.isdigit():
        raise ValueError(f"promote_version must be a model version number, got {version!r}")
    mlflow.set_registry_uri("databricks-uc")
    mlflow.MlflowClient().set_registered_model_alias(names.model_name(), alias, version)
    return f"{names.model_name()}@{alias} -> version {version}"


ENDPOINT_FUNCTION_SQL = "40_predict_endpoint_function.sql"


def create_endpoint_function(
    spark: SparkSession,
    names: Deployment,
    serving_endpoint: str,
    readers_group: str,
    engineers_group: str | None = None,
    sql_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Create ``<catalog>.<models>.predict_endpoint(content BINARY)``: the ``ai_query`` form of
    predict over ``serving_endpoint`` (sql/40_predict_endpoint_function.sql)."""
    params = {
        **names.sql_params(),
        "serving_endpoint": serving_endpoint,
        "readers_group": validate_principal(readers_group),
        "engineers_group": validate_principal(engineers_group or readers_group),
    }
    sql_files.run_sql_file(spark, parameters.sql_dir(sql_dir) / ENDPOINT_FUNCTION_SQL, params)


def run_comparison_job(
    spark: SparkSession,
    names: Deployment,
    serving_endpoint: str,
    readers_group: str,
    engineers_group: str | None = None,
    promote_version: str | None = None,
) -> str:
    """The serving comparison job: (re)create ``predict_endpoint``, compute and MERGE the
    comparison, and with ``promote_version`` move ``@champion`` after it. Returns what to print:
    the comparison table, then the alias move."""
    if promote_version is not None and not promote_version.isdigit():
        raise ValueError(f"promote_version must be a model version number, got {promote_version!r}")
    create_endpoint_function(spark, names, serving_endpoint, readers_group, engineers_group)
    comparison = serving_comparison(spark, names)
    if comparison is None:
        lines = ["the endpoint has logged no request yet (no inference table in the gold schema)"]
    else:
        rows = [r.asDict() for r in comparison.orderBy("model_name", "model_version").collect()]
        lines = [
            tables.format_comparison(pa.Table.from_pylist(rows, schema=tables.GOLD_COMPARISON))
        ]
    if promote_version is not None:
        lines.append(promote(names, promote_version))
    return "\n".join(lines)
