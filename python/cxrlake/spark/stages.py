"""The stages of `cxrlake.medallion.rules` on Spark: each ``decide_*`` registers the state views
the rules read, runs their SQL with Spark SQL and returns, per table, the rows to MERGE on its
keys and the image ids to delete (`TableChange`); `cxrlake.spark.jobs.apply_changes` writes them
through `cxrlake.spark.catalog.SparkCatalog`. The local engine runs the same SQL with DuckDB, so
both decide the same rows (tests/python/test_medallion_parity.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import NamedTuple

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cxrlake import metrics_service
from cxrlake.medallion import identity, rules
from cxrlake.medallion.transforms import BRONZE_ANALYZE_COLUMNS, feature_tag
from cxrlake.model import Model
from cxrlake.spark.catalog import SparkCatalog
from cxrlake.spark.frames import arrow_frame, materialise
from cxrlake.spark.schemas import SILVER_QUARANTINE
from cxrlake.spark.transforms import listing_quarantine_rows, to_analyzed, to_bronze, to_listing
from cxrlake.spark.udfs import local_path
from cxrlake.threshold import SiteThreshold


class TableChange(NamedTuple):
    """What a stage decided for one table: rows to MERGE on its keys, image ids to delete, and
    (bronze only) rows whose `BRONZE_STAT_COLUMNS` to update."""

    upserts: DataFrame | None = None  # in the table's schema
    deletes: DataFrame | None = None  # an image_id column
    updates: DataFrame | None = None  # keys + BRONZE_STAT_COLUMNS


BRONZE_STAT_COLUMNS = (
    "file_path",
    "file_size_bytes",
    "source_modified_at",
    "ingested_at",
    "ingestion_batch_id",
)
"""Bronze columns `rules.BRONZE_STAT_UPDATES` refreshes for bytes bronze already holds."""
REDECIDED_COLUMNS = ("predicted_label", "is_correct", "decision_threshold", "threshold_source")
"""Prediction columns `decide_redecide` sets (the label and what it depends on; never the
score)."""
IDENTITY_RULE_SAMPLE = 1000
"""Bronze rows under a source read to tell which identity rule it follows (`identity_roots`)."""


def state_tables(catalog: SparkCatalog) -> dict[str, DataFrame]:
    """The state DataFrames the rules read, by view name, from the catalog's Delta tables."""
    return {view: catalog.frame(spec) for view, spec in rules.VIEWS.items()}


def register_model(spark: SparkSession, model: Model) -> None:
    """The one-row ``model`` view of ``model``."""
    row = rules.model_row(model.name, model.version, feature_tag(model))
    arrow_frame(spark, row).createOrReplaceTempView("model")


def register_state(spark: SparkSession, tables: Mapping[str, DataFrame], model: Model) -> None:
    """Register the views of `cxrlake.medallion.rules`: each table's state columns and the
    one-row ``model`` view of ``model``."""
    for view in rules.VIEWS:
        columns = list(rules.STATE_COLUMNS[view])
        if view == "predictions":
            columns = list(dict.fromkeys([*columns, *rules.EVALUATION_COLUMNS]))
        tables[view].select(*columns).createOrReplaceTempView(view)
    register_model(spark, model)


def bronze_stats(spark: SparkSession, now: dt.datetime, batch_id: str) -> DataFrame:
    """`rules.BRONZE_STAT_UPDATES` (over the registered ``incoming`` and ``bronze`` views) with
    this ingestion's time and batch id: keys plus `BRONZE_STAT_COLUMNS`."""
    return spark.sql(rules.BRONZE_STAT_UPDATES).select(
        "image_id",
        "content_sha256",
        "file_path",
        "file_size_bytes",
        "source_modified_at",
        F.lit(now).alias("ingested_at"),
        F.lit(batch_id).alias("ingestion_batch_id"),
    )


def decide_bronze(
    spark: SparkSession,
    tables: Mapping[str, DataFrame],
    source_path: str,
    model: Model,
    ingestion_batch_id: str,
    now: dt.datetime | None = None,
) -> dict[str, TableChange]:
    """Bronze stage of the rules over the files under ``source_path`` (a batch listing with
    Spark's ``binaryFile`` source; only files bronze has not seen are read): new versions to
    insert, known bytes whose stats to refresh, listing rows to hold in quarantine (collisions),
    held images to evict from silver and gold. Returns changes by view name."""
    now = now or dt.datetime.now(dt.timezone.utc)
    register_state(spark, tables, model)
    roots = identity_roots(spark.table("bronze"), source_path)
    files = spark.read.format("binaryFile").option("recursiveFileLookup", "true")
    # materialised once: every listing rule reads it, and listing a volume is the slow part
    materialise(to_listing(files.load(source_path), roots)).createOrReplaceTempView("listing")
    wanted = [r[0] for r in spark.sql(rules.BRONZE_TO_READ).select("file_path").collect()]
    changes = {view: TableChange() for view in rules.VIEWS}
    if wanted:
        incoming = to_bronze(files.load(wanted), ingestion_batch_id, now, roots)
        incoming.createOrReplaceTempView("incoming")
        changes["bronze"] = TableChange(
            upserts=spark.sql(rules.BRONZE_INSERTS),
            updates=bronze_stats(spark, now, ingestion_batch_id),
        )
    changes.update(decide_listing(spark, ingestion_batch_id, now))
    return changes


def identity_roots(bronze: DataFrame, source_path: str) -> tuple[str, ...]:
    """``(source_path,)`` when the source's files follow identity rule 2 (the site enters the
    image id), ``()`` when bronze already holds them under rule-1 ids (a lakehouse written
    before sites keeps its ids): `cxrlake.medallion.identity.identity_roots` over at most
    `IDENTITY_RULE_SAMPLE` bronze rows under the source."""
    root = local_path(source_path).rstrip("/")
    rows = (
        bronze.select("file_path", "image_id")
        .where(F.col("file_path").startswith(root + "/"))
        .limit(IDENTITY_RULE_SAMPLE)
        .collect()
    )
    known = pa.table(
        {
            "file_path": pa.array([r[0] for r in rows], pa.string()),
            "image_id": pa.array([r[1] for r in rows], pa.string()),
        }
    )
    return tuple(identity.identity_roots([root], known))


def decide_listing(spark: SparkSession, batch_id: str, now: dt.datetime) -> dict[str, TableChange]:
    """Listing rows to hold in quarantine (and held rows to release), and the held images to
    evict from silver, features and predictions."""
    held = spark.sql(rules.LISTING_QUARANTINE_UPSERTS).mapInArrow(
        listing_quarantine_rows(batch_id, now), SILVER_QUARANTINE
    )
    out = {"quarantine": TableChange(held, spark.sql(rules.LISTING_QUARANTINE_RELEASES))}
    for view in ("silver", "features", "predictions"):
        out[view] = TableChange(deletes=spark.sql(rules.listing_evictions(view)))
    return out


def decide_analysis(
    spark: SparkSession,
    tables: Mapping[str, DataFrame],
    model: Model,
    model_path: str | None = None,
    now: dt.datetime | None = None,
    threshold: SiteThreshold | None = None,
    deid_key: bytes | None = None,
) -> dict[str, TableChange]:
    """Silver and gold stage of the rules: every image not in its end state for ``model`` is
    decoded and scored once (`transforms.to_analyzed`, persisted); returns the rows to MERGE into
    silver, features, predictions and quarantine and the image ids each table loses.
    ``threshold``: a site's `SiteThreshold` deciding the labels. ``deid_key``: the DICOM
    de-identification key (`cxrlake.spark.jobs.read_deid_key`); None = the executors'
    ``CXRLAKE_DEID_KEY``, required only when DICOM rows are analysed."""
    register_state(spark, tables, model)
    todo = spark.sql(rules.ANALYZE_TODO)
    bronze = tables["bronze"].select(*BRONZE_ANALYZE_COLUMNS)
    rows = bronze.join(todo, ["image_id", "content_sha256"], "left_semi").dropDuplicates(
        ["image_id", "content_sha256"]
    )
    parts = to_analyzed(
        rows, model=model_path, processed_at=now, threshold=threshold, deid_key=deid_key
    )._asdict()
    changes = {view: TableChange() for view in rules.VIEWS}
    for view in rules.ANALYZE_UPSERTS:
        deleted = parts[rules.ANALYZE_DELETES[view]].select("image_id")
        changes[view] = TableChange(parts[rules.ANALYZE_UPSERTS[view]], deleted)
    return changes


def decide_performance(
    catalog: SparkCatalog,
    model: Model,
    now: dt.datetime | None = None,
    threshold: SiteThreshold | None = None,
) -> dict[str, TableChange]:
    """Performance stage: `cxrlake.metrics_service.performance_rows` over ``catalog`` (the
    service the local engine runs; the rule reads the Delta tables where they are), the
    evaluation rows not recorded yet."""
    value = threshold.threshold if threshold else model.threshold
    rows = metrics_service.performance_rows(catalog, model, value, now)
    return {"performance": TableChange(upserts=arrow_frame(catalog.spark, rows))}


def decide_drift(catalog: SparkCatalog, model: Model, now: dt.datetime | None = None) -> DataFrame:
    """Drift stage: `cxrlake.metrics_service.drift_rows` over ``catalog`` (the service the local
    engine runs), the current model's ``gold.drift_metrics`` rows that are new or changed."""
    return arrow_frame(catalog.spark, metrics_service.drift_rows(catalog, model, now))


def decide_redecide(
    spark: SparkSession,
    tables: Mapping[str, DataFrame],
    model: Model,
    threshold: SiteThreshold | None,
) -> DataFrame:
    """The predictions of ``model`` decided at another threshold than ``threshold`` (None = the
    model's own), re-decided: keys plus `REDECIDED_COLUMNS` (`rules.PREDICTIONS_TO_REDECIDE`)."""
    value = float(threshold.threshold if threshold else model.threshold)
    source = threshold.source if threshold else "model"
    tables["predictions"].select(*rules.REDECIDE_COLUMNS).createOrReplaceTempView("predictions")
    register_model(spark, model)
    arrow_frame(
        spark, pa.table({"threshold": [value], "threshold_source": [source]})
    ).createOrReplaceTempView("decision")
    label = (F.col("prediction_probability") >= F.col("threshold")).cast("int")
    return spark.sql(rules.PREDICTIONS_TO_REDECIDE).select(
        "image_id",
        "model_name",
        "model_version",
        label.alias("predicted_label"),
        (label == F.col("true_label")).alias("is_correct"),
        F.col("threshold").alias("decision_threshold"),
        "threshold_source",
    )


__all__ = [
    "BRONZE_STAT_COLUMNS",
    "REDECIDED_COLUMNS",
    "TableChange",
    "bronze_stats",
    "decide_analysis",
    "decide_bronze",
    "decide_drift",
    "decide_performance",
    "decide_redecide",
    "identity_roots",
    "register_state",
    "state_tables",
]
