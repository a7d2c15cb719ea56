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
from collections.abc import Iterator
from typing import Any

from cxrlake.medallion import schemas as lake_schemas
from cxrlake.medallion import serving as tables
from cxrlake.spark.deployment import Deployment

PAYLOAD_COLUMNS = (
    "databricks_request_id",
    "request_time",
    "status_code",
    "served_entity_id",
    "request",
    "response",
)


def _rows(batches: Iterator[Any]) -> Iterator[Any]:
    for batch in batches:
        yield from tables.inference_rows(batch).to_batches()


def decide_comparison(
    spark: Any, payload: Any, feedback: Any, predictions: Any, now: dt.datetime | None = None
) -> Any:
    """The comparison rows (a DataFrame in `tables.GOLD_COMPARISON` order) from the inference
    table ``payload``, ``gold.prediction_feedback`` and ``gold.pneumonia_predictions``
    DataFrames: the rule `cxrlake promote` runs in DuckDB, in Spark SQL."""
    import pyspark.sql.functions as F

    from cxrlake.spark.jobs import _materialise
    from cxrlake.spark.schemas import to_spark_schema

    rows = (
        payload.where("status_code = 200")
        .select(*PAYLOAD_COLUMNS)
        .mapInArrow(_rows, to_spark_schema(tables.INFERENCE_ROWS))
    )
    # the rule reads the rows five times: parse the JSON once
    _materialise(rows).createOrReplaceTempView("inference_rows")
    feedback.select(*tables.COMPARISON_FEEDBACK_COLUMNS).createOrReplaceTempView("feedback")
    predictions.select(*tables.COMPARISON_PREDICTION_COLUMNS).createOrReplaceTempView("predictions")
    computed_at = now or dt.datetime.now(dt.timezone.utc)
    result = spark.sql(tables.COMPARISON).withColumn("computed_at", F.lit(computed_at))
    return result.select(*tables.GOLD_COMPARISON.names)


def serving_comparison(spark: Any, names: Deployment, now: dt.datetime | None = None) -> Any:
    """Compute the comparison from the deployed tables and MERGE it into
    ``<gold>.champion_challenger_comparison``; returns the table as a DataFrame (None when the
    endpoint has logged nothing yet)."""
    from cxrlake.spark.jobs import merge_into, table_name
    from cxrlake.spark.schemas import to_spark_schema

    payload = names.table(f"gold.{tables.PAYLOAD_TABLE}")
    if not spark.catalog.tableExists(payload):
        return None
    frames = {}
    for view, spec in (
        ("feedback", lake_schemas.FEEDBACK),
        ("predictions", lake_schemas.PREDICTIONS),
    ):
        name = table_name(names, spec)
        if spark.catalog.tableExists(name):
            frames[view] = spark.table(name)
        else:  # the review tables may not exist yet: no verdicts
            frames[view] = spark.createDataFrame([], to_spark_schema(spec.arrow_schema))
    result = decide_comparison(
        spark, spark.table(payload), frames["feedback"], frames["predictions"], now
    )
    target = table_name(names, tables.COMPARISON_TABLE)
    if not spark.catalog.tableExists(target):
        empty = spark.createDataFrame([], to_spark_schema(tables.GOLD_COMPARISON))
        empty.write.format("delta").option("delta.enableChangeDataFeed", "true").saveAsTable(target)
    merge_into(result, target, tables.COMPARISON_TABLE.keys, update=True)
    return spark.table(target)


def promote(names: Deployment, version: str, alias: str = "champion") -> str:
    """Move ``<catalog>.<models>.<registered model>@alias`` to ``version`` in Unity Catalog."""
    import mlflow

    if not version.isdigit():
        raise ValueError(f"promote_version must be a model version number, got {version!r}")
    mlflow.set_registry_uri("databricks-uc")
    mlflow.MlflowClient().set_registered_model_alias(names.model_name(), alias, version)
    return f"{names.model_name()}@{alias} -> version {version}"


ENDPOINT_FUNCTION_SQL = "40_predict_endpoint_function.sql"


def create_endpoint_function(
    spark: Any,
    names: Deployment,
    serving_endpoint: str,
    readers_group: str,
    engineers_group: str | None = None,
    sql_dir: Any = None,
) -> None:
    """Create ``<catalog>.<models>.predict_endpoint(content BINARY)``: the ``ai_query`` form of
    predict over ``serving_endpoint`` (sql/40_predict_endpoint_function.sql)."""
    from cxrlake.spark import sql_files
    from cxrlake.spark.jobs import _sql_dir, validate_principal

    params = {
        **names.sql_params(),
        "serving_endpoint": serving_endpoint,
        "readers_group": validate_principal(readers_group),
        "engineers_group": validate_principal(engineers_group or readers_group),
    }
    sql_files.run_sql_file(spark, _sql_dir(sql_dir) / ENDPOINT_FUNCTION_SQL, params)


def run_comparison_job(
    spark: Any,
    names: Deployment,
    serving_endpoint: str,
    readers_group: str,
    engineers_group: str | None = None,
    promote_version: str | None = None,
) -> str:
    """The serving comparison job: (re)create ``predict_endpoint``, compute and MERGE the
    comparison, and with ``promote_version`` move ``@champion`` after it. Returns what to print:
    the comparison table, then the alias move."""
    import pyarrow as pa

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
