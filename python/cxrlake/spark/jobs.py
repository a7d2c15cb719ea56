"""What the Databricks notebooks in ``jobs/`` run: validated parameters in, tables written.

Each notebook reads its widgets, validates them with the ``validate_*`` functions here and calls
one entry point (`ingest_bronze`, `transform_silver`, `predict_gold`, `maintain`,
`create_tables`, `create_sql_functions`). ``catalog`` is a `Deployment` (catalog and the schema
names the bundle deployed, from `validate_deployment`) or, without a bundle, a catalog name
(undecorated schema names). The image work is the ``mapInArrow`` transforms of
`cxrlake.spark.transforms`; writes are Delta ``MERGE`` statements keyed as in
`cxrlake.medallion.schemas` (bronze is insert-only on (image_id, content_sha256)), so re-running
a job, or retrying a micro-batch, never duplicates a row.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from cxrlake.exceptions import CxrlakeError
from cxrlake.medallion import rules
from cxrlake.medallion import schemas as lake_schemas
from cxrlake.medallion.schemas import TableSpec
from cxrlake.spark import sql_files
from cxrlake.spark.deployment import Deployment, DeploymentError
from cxrlake.spark.local_runtime import storage_path

CATALOG = re.compile(r"healthcare_catalog_[a-z0-9_]+|spark_catalog")  # spark_catalog: local runtime
VOLUME_PATH = re.compile(
    r"/Volumes/[A-Za-z0-9_]+/[A-Za-z0-9_]+/[A-Za-z0-9_]+(?:/[A-Za-z0-9_.=-]+)*/?"
)
MIN_RETAIN_HOURS = 168
TABLES_SQL = (
    "10_bronze_tables.sql",
    "11_silver_tables.sql",
    "12_gold_tables.sql",
    "13_review_tables.sql",
    "20_dataset_summary_view.sql",
)
"""Files `create_tables` runs, in order. Not 00_catalog.sql (a metastore admin runs it) nor
01_schemas.sql / 02_volumes.sql: the bundle owns the schemas and volumes."""
FUNCTIONS_SQL = "30_predict_function.sql"
REVIEW_APP_GRANTS_SQL = "14_review_app_grants.sql"
MAINTENANCE_SQL = "90_maintenance.sql"


class JobParameterError(CxrlakeError, ValueError):
    """A notebook widget holds an invalid value; the message says which and what is expected."""


def validate_catalog(value: str) -> str:
    """``healthcare_catalog_<env>`` (lowercase letters, digits, ``_``)."""
    value = (value or "").strip()
    if not CATALOG.fullmatch(value):
        raise JobParameterError(
            f"catalog {value!r} is not healthcare_catalog_<env> (e.g. healthcare_catalog_dev)"
        )
    return value


def validate_volume_path(name: str, value: str, catalog: str) -> str:
    """A ``/Volumes/<catalog>/<schema>/<volume>/...`` path inside ``catalog``."""
    value = (value or "").strip()
    if not VOLUME_PATH.fullmatch(value) or value.split("/")[2] != catalog:
        raise JobParameterError(
            f"{name} {value!r} is not a /Volumes/{catalog}/<schema>/<volume> path"
        )
    return value.rstrip("/")


def validate_model(value: str) -> str | None:
    """Empty (the model shipped in the wheel) or a path to an ``.onnx`` file."""
    value = (value or "").strip()
    if not value:
        return None
    if not value.endswith(".onnx"):
        raise JobParameterError(f"model {value!r} is not an .onnx file (empty = shipped model)")
    return value


def validate_retain_hours(value: str) -> int:
    """VACUUM retention in hours, at least `MIN_RETAIN_HOURS` (one week)."""
    try:
        hours = int(str(value).strip())
    except ValueError:
        raise JobParameterError(f"retain_hours {value!r} is not an integer") from None
    if hours < MIN_RETAIN_HOURS:
        raise JobParameterError(
            f"retain_hours {hours} is below the safe minimum {MIN_RETAIN_HOURS}"
        )
    return hours


def validate_principal(value: str) -> str:
    """A user, group or service principal name for GRANT."""
    value = (value or "").strip()
    try:
        return sql_files.validate_parameter("readers_group", value)
    except sql_files.SqlParameterError as e:
        raise JobParameterError(str(e)) from None


def validate_deployment(
    catalog: str,
    bronze_schema: str,
    silver_schema: str,
    gold_schema: str,
    models_schema: str,
    registered_model: str | None = None,
    deid_secret_scope: str | None = None,
) -> Deployment:
    """The catalog and the schema names the bundle deployed (job parameters
    ``${resources.schemas.<key>.name}``: ``dev_<user>_bronze`` ... in development mode), the
    registered model's deployed name (``${resources.registered_models.<key>.name}``) and the
    environment's secret scope (``${var.deid_secret_scope}``); the last two default to the
    names without a bundle when not given."""
    try:
        return Deployment.from_parameters(
            catalog,
            bronze_schema,
            silver_schema,
            gold_schema,
            models_schema,
            registered_model=registered_model,
            deid_secret_scope=deid_secret_scope,
        )
    except DeploymentError as e:
        raise JobParameterError(str(e)) from None


def _deployment(catalog: str | Deployment) -> Deployment:
    """A `Deployment`; a bare catalog name means the undecorated schema names (no bundle)."""
    if isinstance(catalog, Deployment):
        return catalog
    return Deployment(validate_catalog(catalog))


def table_name(catalog: str | Deployment, spec: TableSpec) -> str:
    """``<catalog>.<schema>.<table>`` of a lakehouse table, with the deployed schema name."""
    return _deployment(catalog).table(spec.qualified_name)


def merge_statement(target: str, source: str, keys: tuple[str, ...], update: bool) -> str:
    """``MERGE INTO target USING source`` on ``keys`` (NULL-safe): insert new rows, and update
    matched rows when ``update`` (insert-only otherwise, as for append-only bronze)."""
    on = " AND ".join(f"t.{k} <=> s.{k}" for k in keys)
    matched = "WHEN MATCHED THEN UPDATE SET * " if update else ""
    return (
        f"MERGE INTO {target} AS t USING {source} AS s ON {on} "
        f"{matched}WHEN NOT MATCHED THEN INSERT *"
    )


def merge_into(df: Any, target: str, keys: tuple[str, ...], update: bool) -> dict[str, int]:
    """MERGE a DataFrame into a Delta table (one row per key kept); return Delta's row counts."""
    if df.isEmpty():  # nothing to write: no MERGE, no empty commit
        return {}
    view = f"cxrlake_merge_{uuid.uuid4().hex}"
    df.dropDuplicates(list(keys)).createOrReplaceTempView(view)
    try:
        rows = df.sparkSession.sql(merge_statement(target, view, keys, update)).collect()
    finally:
        df.sparkSession.catalog.dropTempView(view)
    metrics = rows[0].asDict() if rows else {}
    return {k: int(v) for k, v in metrics.items() if isinstance(v, int)}


class TableChange(NamedTuple):
    """What a stage decided for one table: rows to MERGE on its keys, image ids to delete, and
    (bronze only) rows whose ``STAT_COLUMNS`` to update."""

    upserts: Any = None  # DataFrame in the table's schema
    deletes: Any = None  # DataFrame with an image_id column
    updates: Any = None  # DataFrame: keys + BRONZE_STAT_COLUMNS


BRONZE_STAT_COLUMNS = (
    "file_path",
    "file_size_bytes",
    "source_modified_at",
    "ingested_at",
    "ingestion_batch_id",
)
"""Bronze columns `rules.BRONZE_STAT_UPDATES` refreshes for bytes bronze already holds."""


def catalog_tables(spark: Any, catalog: str | Deployment) -> dict[str, Any]:
    """The state DataFrames the rules read, by view name, from the catalog's Delta tables."""
    return {view: spark.table(table_name(catalog, spec)) for view, spec in rules.VIEWS.items()}


def register_state(spark: Any, tables: Mapping[str, Any], model: Any) -> None:
    """Register the views of `cxrlake.medallion.rules`: each table's state columns and the
    one-row ``model`` view of ``model`` (a `cxrlake.Model`)."""
    from cxrlake.medallion.transforms import feature_tag

    for view in rules.VIEWS:
        columns = list(rules.STATE_COLUMNS[view])
        if view == "predictions":
            columns = list(dict.fromkeys([*columns, *rules.EVALUATION_COLUMNS]))
        tables[view].select(*columns).createOrReplaceTempView(view)
    row = rules.model_row(model.name, model.version, feature_tag(model))
    _arrow_frame(spark, row).createOrReplaceTempView("model")


def _arrow_frame(spark: Any, table: Any) -> Any:
    """A DataFrame of a small Arrow table (driver side)."""
    import pyarrow as pa

    from cxrlake.spark.schemas import to_spark_schema

    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    schema = to_spark_schema(table.schema)
    try:
        return spark.createDataFrame(table, schema=schema)  # Spark >= 4.0 takes Arrow
    except TypeError:  # Spark 3.5
        return spark.createDataFrame(table.to_pandas(), schema=schema)


def decide_bronze(
    spark: Any,
    tables: Mapping[str, Any],
    source_path: str,
    model: Any,
    ingestion_batch_id: str,
    now: dt.datetime | None = None,
) -> dict[str, TableChange]:
    """Bronze stage of the rules over the files under ``source_path`` (a batch listing with
    Spark's ``binaryFile`` source; only files bronze has not seen are read): new versions to
    insert, known bytes whose stats to refresh, listing rows to hold in quarantine (collisions),
    held images to evict from silver and gold. Returns changes by view name."""
    from pyspark.sql import functions as F

    from cxrlake.spark.transforms import to_bronze, to_listing

    now = now or dt.datetime.now(dt.timezone.utc)
    register_state(spark, tables, model)
    roots = identity_roots(spark.table("bronze"), source_path)
    files = spark.read.format("binaryFile").option("recursiveFileLookup", "true")
    # materialised once: every listing rule reads it, and listing a volume is the slow part
    _materialise(to_listing(files.load(source_path), roots)).createOrReplaceTempView("listing")
    wanted = [r[0] for r in spark.sql(rules.BRONZE_TO_READ).select("file_path").collect()]
    changes = {view: TableChange() for view in rules.VIEWS}
    if wanted:
        incoming = to_bronze(files.load(wanted), ingestion_batch_id, now, roots)
        incoming.createOrReplaceTempView("incoming")
        stats = spark.sql(rules.BRONZE_STAT_UPDATES).select(
            "image_id",
            "content_sha256",
            "file_path",
            "file_size_bytes",
            "source_modified_at",
            F.lit(now).alias("ingested_at"),
            F.lit(ingestion_batch_id).alias("ingestion_batch_id"),
        )
        changes["bronze"] = TableChange(upserts=spark.sql(rules.BRONZE_INSERTS), updates=stats)
    changes.update(_decide_listing(spark, ingestion_batch_id, now))
    return changes


#: Bronze rows under a source read to tell which identity rule it follows (`identity_roots`).
IDENTITY_RULE_SAMPLE = 1000


def identity_roots(bronze: Any, source_path: str) -> tuple[str, ...]:
    """``(source_path,)`` when the source's files follow identity rule 2 (the site enters the
    image id), ``()`` when bronze already holds them under rule-1 ids (a lakehouse written
    before sites keeps its ids): `cxrlake.medallion.identity.identity_roots` over at most
    `IDENTITY_RULE_SAMPLE` bronze rows under the source."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    from cxrlake.medallion import identity
    from cxrlake.spark.udfs import local_path

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


def _materialise(df: Any) -> Any:
    """``df`` computed once and kept (``localCheckpoint``; ``cache`` where unsupported)."""
    try:
        return df.localCheckpoint()
    except Exception:  # noqa: BLE001 - e.g. a Spark Connect server without checkpoints
        return df.cache()


def _decide_listing(spark: Any, batch_id: str, now: dt.datetime) -> dict[str, TableChange]:
    from cxrlake.spark.schemas import SILVER_QUARANTINE
    from cxrlake.spark.transforms import listing_quarantine_rows

    held = spark.sql(rules.LISTING_QUARANTINE_UPSERTS).mapInArrow(
        listing_quarantine_rows(batch_id, now), SILVER_QUARANTINE
    )
    out = {"quarantine": TableChange(held, spark.sql(rules.LISTING_QUARANTINE_RELEASES))}
    for view in ("silver", "features", "predictions"):
        out[view] = TableChange(deletes=spark.sql(rules.listing_evictions(view)))
    return out


def decide_analysis(
    spark: Any,
    tables: Mapping[str, Any],
    model: Any,
    model_path: str | None = None,
    now: dt.datetime | None = None,
    threshold: Any = None,
    deid_key: bytes | None = None,
) -> dict[str, TableChange]:
    """Silver and gold stage of the rules: every image not in its end state for ``model`` is
    decoded and scored once (`transforms.to_analyzed`, persisted); returns the rows to MERGE into
    silver, features, predictions and quarantine and the image ids each table loses.
    ``threshold``: a site's `cxrlake.calibration.SiteThreshold` deciding the labels.
    ``deid_key``: the DICOM de-identification key (`read_deid_key`); None = the executors'
    ``CXRLAKE_DEID_KEY``, required only when DICOM rows are analysed."""
    from cxrlake.medallion.transforms import BRONZE_ANALYZE_COLUMNS
    from cxrlake.spark.transforms import to_analyzed

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
    spark: Any,
    tables: Mapping[str, Any],
    model: Any,
    now: dt.datetime | None = None,
    threshold: Any = None,
) -> dict[str, TableChange]:
    """Performance stage of the rules: metrics of ``model`` over the predictions of the current
    bytes of images in silver (computed on the driver by `cxrlake.medallion.metrics`); returns
    the evaluation rows not recorded yet."""
    from cxrlake.medallion import metrics
    from cxrlake.spark.transforms import to_arrow

    register_state(spark, tables, model)
    evaluated = to_arrow(spark.sql(rules.EVALUATION_INPUT))
    rows = metrics.model_performance(
        evaluated,
        threshold=threshold.threshold if threshold else model.threshold,
        evaluated_at=now or dt.datetime.now(dt.timezone.utc),
    )
    _arrow_frame(spark, rows).createOrReplaceTempView("evaluations")
    return {"performance": TableChange(upserts=spark.sql(rules.PERFORMANCE_INSERTS))}


def decide_drift(
    spark: Any, catalog: str | Deployment, model: Any, now: dt.datetime | None = None
) -> Any:
    """Drift stage of the rules: the current model's ``gold.drift_metrics`` rows that are new or
    changed (`rules.DRIFT_METRICS`, the SQL the local engine runs), with ``computed_at``."""
    import pyspark.sql.functions as F

    predictions = spark.table(table_name(catalog, lake_schemas.PREDICTIONS))
    predictions.select(*rules.DRIFT_PREDICTION_COLUMNS).createOrReplaceTempView("predictions")
    silver = spark.table(table_name(catalog, lake_schemas.SILVER))
    silver.select("image_id", "content_sha256", "quality_score").createOrReplaceTempView("silver")
    spark.table(table_name(catalog, lake_schemas.DRIFT_METRICS)).createOrReplaceTempView("drift")
    from cxrlake.medallion.transforms import feature_tag

    _arrow_frame(
        spark, rules.model_row(model.name, model.version, feature_tag(model))
    ).createOrReplaceTempView("model")
    reference = rules.drift_reference_rows(model.name, model.version, model.drift_reference)
    _arrow_frame(spark, reference).createOrReplaceTempView("drift_reference")
    when = now or dt.datetime.now(dt.timezone.utc)
    return spark.sql(rules.DRIFT_METRICS).withColumn("computed_at", F.lit(when).cast("timestamp"))


def write_drift(
    spark: Any, catalog: str | Deployment, model: Any, now: dt.datetime | None = None
) -> dict[str, int]:
    """MERGE `decide_drift`'s rows into ``gold.drift_metrics`` on its keys."""
    spec = lake_schemas.DRIFT_METRICS
    rows = decide_drift(spark, catalog, model, now)
    return merge_into(rows, table_name(catalog, spec), spec.keys, update=True)


def delete_statement(target: str, source: str) -> str:
    """Delete the rows of ``target`` whose image_id is in view ``source``: a ``MERGE ... WHEN
    MATCHED THEN DELETE`` (open-source Delta refuses a subquery in a ``DELETE`` condition:
    DELTA_UNSUPPORTED_SUBQUERY; Databricks runs both)."""
    return (
        f"MERGE INTO {target} AS t USING (SELECT DISTINCT image_id FROM {source}) AS s "
        "ON t.image_id = s.image_id WHEN MATCHED THEN DELETE"
    )


def bronze_stats_statement(target: str, source: str) -> str:
    """``MERGE`` refreshing `BRONZE_STAT_COLUMNS` of bronze rows matched on their keys."""
    on = " AND ".join(f"t.{k} = s.{k}" for k in lake_schemas.BRONZE.keys)
    sets = ", ".join(f"t.{c} = s.{c}" for c in BRONZE_STAT_COLUMNS)
    return (
        f"MERGE INTO {target} AS t USING {source} AS s ON {on} WHEN MATCHED THEN UPDATE SET {sets}"
    )


def apply_changes(
    spark: Any, catalog: str | Deployment, changes: Mapping[str, TableChange]
) -> dict[str, Any]:
    """Write a stage's decision to the catalog's Delta tables: per table, the MERGE of its
    upserts (insert-only for bronze and performance), then the bronze stat refresh, then the
    deletes. Each statement is idempotent, so a job stopped between two of them is finished by
    the next run, whose rules select what is left. Returns Delta's row counts per table."""
    counts: dict[str, Any] = {}
    for view, change in changes.items():
        spec = rules.VIEWS[view]
        target = table_name(catalog, spec)
        done: dict[str, Any] = {}
        if change.upserts is not None:
            insert_only = spec in (lake_schemas.BRONZE, lake_schemas.PERFORMANCE)
            done["merge"] = merge_into(change.upserts, target, spec.keys, update=not insert_only)
        if change.updates is not None:
            done["stats"] = _run_with_view(spark, change.updates, bronze_stats_statement, target)
        if change.deletes is not None:
            done["delete"] = _run_with_view(spark, change.deletes, delete_statement, target)
        counts[view] = done
    spark.catalog.clearCache()
    return counts


def _run_with_view(spark: Any, df: Any, statement: Any, target: str) -> dict[str, int]:
    if df.isEmpty():  # nothing to change: no statement, no empty commit
        return {}
    view = f"cxrlake_change_{uuid.uuid4().hex}"
    df.createOrReplaceTempView(view)
    try:
        rows = spark.sql(statement(target, view)).collect()
    finally:
        spark.catalog.dropTempView(view)
    metrics = rows[0].asDict() if rows else {}
    return {k: int(v) for k, v in metrics.items() if isinstance(v, int)}


def ingest_bronze(
    spark: Any, catalog: str | Deployment, source_path: str, checkpoint_path: str
) -> dict[str, Any]:
    """Auto Loader (``cloudFiles.format = binaryFile``, trigger ``availableNow``) from the volume
    ``source_path`` into ``bronze.kaggle_xray_metadata``; each micro-batch goes through the bronze
    rules (`rules.BRONZE_INSERTS`, `rules.BRONZE_STAT_UPDATES`) and is MERGEd insert-only on
    (image_id, content_sha256), so a retried batch adds nothing. Returns the query's progress."""
    from pyspark.sql import functions as F

    from cxrlake.spark.transforms import to_bronze
    from cxrlake.spark.udfs import configure_session

    configure_session(spark)
    target = table_name(catalog, lake_schemas.BRONZE)
    source_path = storage_path(source_path)

    def merge_batch(batch_df: Any, batch_id: int) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        ingestion_id = f"autoloader-{batch_id:06d}-{now:%Y%m%dT%H%M%SZ}"
        session = batch_df.sparkSession
        session.table(target).select(*rules.STATE_COLUMNS["bronze"]).createOrReplaceTempView(
            "bronze"
        )
        roots = identity_roots(session.table("bronze"), source_path)
        to_bronze(batch_df, ingestion_id, now, roots).createOrReplaceTempView("incoming")
        stats = session.sql(rules.BRONZE_STAT_UPDATES).select(
            "image_id",
            "content_sha256",
            "file_path",
            "file_size_bytes",
            "source_modified_at",
            F.lit(now).alias("ingested_at"),
            F.lit(ingestion_id).alias("ingestion_batch_id"),
        )
        _run_with_view(session, stats, bronze_stats_statement, target)
        rows = session.sql(rules.BRONZE_INSERTS)
        merge_into(rows, target, lake_schemas.BRONZE.keys, update=False)

    # Every file with an image name (`to_bronze` drops the others, as the listings do): what
    # cannot be decoded is quarantined by silver, with the reason. (Names starting with '_' or
    # '.' are skipped by the file source, as are zero-byte files.)
    stream = file_stream(spark, source_path)
    query = (
        stream.writeStream.foreachBatch(merge_batch)
        .option("checkpointLocation", storage_path(checkpoint_path))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    progress = query.recentProgress
    return {
        "target": target,
        "micro_batches": len(progress),
        "files": sum(int(p.get("numInputRows", 0)) for p in progress),
    }


def file_stream(spark: Any, source_path: str) -> Any:
    """The streaming source of bronze: Auto Loader (``cloudFiles``, ``binaryFile``) on
    Databricks; where it does not exist (open-source Spark, `cxrlake.spark.local_runtime`),
    Spark's own file stream source in ``binaryFile`` format, recursive like Auto Loader."""
    try:
        return (
            spark.readStream.format("cloudFiles")
            .option("cloudFiles.format", "binaryFile")
            .load(source_path)
        )
    except Exception as e:  # noqa: BLE001 - Py4J or PySpark error, by Spark version
        if "DATA_SOURCE_NOT_FOUND" not in str(e):
            raise
    return (
        spark.readStream.format("binaryFile")
        .schema("path STRING, modificationTime TIMESTAMP, length BIGINT, content BINARY")
        .option("recursiveFileLookup", "true")
        .load(source_path)
    )


def read_deid_key(
    dbutils: Any = None,
    scope: str = "cxrlake",
    name: str = "deid-key",
    environ: Mapping[str, str] | None = None,
) -> bytes | None:
    """The DICOM de-identification key on the driver: ``CXRLAKE_DEID_KEY``, else the secret
    ``scope``/``name`` through ``dbutils.secrets.get`` (https://docs.databricks.com/aws/en/security/secrets/);
    None when neither holds one (a run without DICOM files needs none; with DICOM rows the
    executors then fail naming both). A key shorter than 16 bytes raises InvalidArgumentError.
    The key is shipped to the tasks inside the ``mapInArrow`` closure, never written anywhere."""
    from cxrlake import deid
    from cxrlake.exceptions import InvalidArgumentError

    def secret(s: str, n: str) -> str:
        if dbutils is None:
            return ""
        try:
            return dbutils.secrets.get(scope=s, key=n)
        except Exception:  # noqa: BLE001 - no such scope or key, or no permission to read it
            return ""

    try:
        return deid.load_key(environ, secret=secret, scope=scope, name=name)
    except InvalidArgumentError as e:
        if str(e).startswith("no de-identification key"):
            return None
        raise


def transform_silver(
    spark: Any,
    catalog: str | Deployment,
    model: str | None = None,
    deid_key: bytes | None = None,
    dbutils: Any = None,
) -> dict[str, Any]:
    """Silver and gold in one pass: every image of bronze not in its end state (new image, new
    bytes, new model version, or left half-written by a stopped run) is decoded and scored once
    with the Rust core; silver, features, predictions and quarantine are MERGEd on their keys,
    and an image that now fails leaves silver and gold. DICOM metadata is de-identified with
    ``deid_key``, else the key `read_deid_key` finds (environment, or the secret through the
    notebook's ``dbutils``). Returns Delta's row counts."""
    from cxrlake.spark.udfs import configure_session, model_for

    if deid_key is None:
        deid_key = read_deid_key(dbutils, scope=_deployment(catalog).secret_scope)
    configure_session(spark)
    loaded = model_for(model)
    changes = decide_analysis(
        spark, catalog_tables(spark, catalog), loaded, model, deid_key=deid_key
    )
    return apply_changes(spark, catalog, changes)


def predict_gold(
    spark: Any,
    catalog: str | Deployment,
    model: str | None = None,
    site: str | None = None,
    deid_key: bytes | None = None,
    dbutils: Any = None,
) -> dict[str, Any]:
    """Gold for ``model``: finish the analysis pass for this model version (images silver holds
    without its prediction are scored once, embedding and probability together), then append the
    ``gold.model_performance`` rows of this model whose prediction set changed (insert-only on the
    deterministic evaluation_id, so an unchanged run writes nothing). ``site``: labels are decided
    by that site's latest threshold for this model version in ``gold.site_thresholds`` (the
    model's own when none is stored); every prediction records which one decided. DICOM rows
    this pass analyses are de-identified as in `transform_silver` (``deid_key`` / ``dbutils``)."""
    from cxrlake.spark.site_thresholds import spark_site_threshold
    from cxrlake.spark.udfs import configure_session, model_for

    if deid_key is None:
        deid_key = read_deid_key(dbutils, scope=_deployment(catalog).secret_scope)
    configure_session(spark)
    loaded = model_for(model)
    threshold = None
    if site:
        table = table_name(catalog, lake_schemas.SITE_THRESHOLDS)
        threshold = spark_site_threshold(spark, table, site, loaded)
    counts = apply_changes(
        spark,
        catalog,
        decide_analysis(
            spark,
            catalog_tables(spark, catalog),
            loaded,
            model,
            threshold=threshold,
            deid_key=deid_key,
        ),
    )
    # Labels of this model decided at another threshold (silver scored at the model's, or an
    # earlier run at another site's) are re-decided at this run's, so that the labels and the
    # metrics below agree: `rules.PREDICTIONS_TO_REDECIDE`, as the local engine does.
    counts["redecided"] = redecide(spark, catalog, loaded, threshold)
    counts.update(
        apply_changes(
            spark,
            catalog,
            decide_performance(spark, catalog_tables(spark, catalog), loaded, threshold=threshold),
        )
    )
    counts["threshold_source"] = threshold.source if threshold else "model"
    counts["drift"] = write_drift(spark, catalog, loaded)
    # model-radiologist agreement over the review app's verdicts (gold.review_agreement)
    for key, value in review_agreement(spark, catalog).items():
        counts[f"review_agreement_{key}"] = value
    return counts


REDECIDED_COLUMNS = ("predicted_label", "is_correct", "decision_threshold", "threshold_source")
"""Prediction columns `redecide` sets (the label and what it depends on; never the score)."""


def decide_redecide(spark: Any, tables: Mapping[str, Any], model: Any, threshold: Any) -> Any:
    """The predictions of ``model`` decided at another threshold than ``threshold`` (a
    `cxrlake.calibration.SiteThreshold`; None = the model's own), re-decided: keys plus
    `REDECIDED_COLUMNS` (`rules.PREDICTIONS_TO_REDECIDE`)."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    from cxrlake.medallion.transforms import feature_tag

    value = float(threshold.threshold if threshold else model.threshold)
    source = threshold.source if threshold else "model"
    tables["predictions"].select(*rules.REDECIDE_COLUMNS).createOrReplaceTempView("predictions")
    _arrow_frame(
        spark, rules.model_row(model.name, model.version, feature_tag(model))
    ).createOrReplaceTempView("model")
    _arrow_frame(
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


def redecide_statement(target: str, source: str) -> str:
    """``MERGE`` setting `REDECIDED_COLUMNS` of the predictions matched on their keys."""
    on = " AND ".join(f"t.{k} = s.{k}" for k in lake_schemas.PREDICTIONS.keys)
    sets = ", ".join(f"t.{c} = s.{c}" for c in REDECIDED_COLUMNS)
    return (
        f"MERGE INTO {target} AS t USING {source} AS s ON {on} WHEN MATCHED THEN UPDATE SET {sets}"
    )


def redecide(spark: Any, catalog: str | Deployment, model: Any, threshold: Any) -> int:
    """Apply `decide_redecide` to ``gold.pneumonia_predictions``; return the rows re-decided."""
    target = table_name(catalog, lake_schemas.PREDICTIONS)
    updates = decide_redecide(spark, {"predictions": spark.table(target)}, model, threshold)
    counts = _run_with_view(spark, _materialise(updates), redecide_statement, target)
    spark.catalog.clearCache()
    return int(counts.get("num_updated_rows", 0))


REVIEW_VIEWS: dict[str, TableSpec] = {
    "predictions": lake_schemas.PREDICTIONS,
    "silver": lake_schemas.SILVER,
    "feedback": lake_schemas.FEEDBACK,
    "label_history": lake_schemas.LABEL_HISTORY,
}
"""Tables the agreement figures read, by the name `decide_review_agreement` expects."""


def decide_review_agreement(
    spark: Any, tables: Mapping[str, Any], now: dt.datetime | None = None
) -> Any:
    """``gold.review_agreement`` rows (a DataFrame; None without verdicts) for the current
    verdicts: `cxrlake.medallion.metrics.agreement_metrics`, the rule the review app runs, over
    the current predictions (content hash = silver's), the feedback and the current labels.
    Collected on the driver: one row per labelled prediction of a model with verdicts."""
    import pyarrow as pa

    from cxrlake.medallion.identity import utc_now
    from cxrlake.medallion.metrics import agreement_metrics

    feedback = [r.asDict() for r in tables["feedback"].collect()]
    if not feedback:
        return None
    preds = (
        tables["predictions"]
        .join(tables["silver"].select("image_id", "content_sha256"), ["image_id", "content_sha256"])
        .select("prediction_id", "image_id", "predicted_label", "model_name", "model_version")
        .collect()
    )
    current = {
        r["image_id"]: r.asDict()
        for r in tables["label_history"]
        .where("is_current")
        .select("image_id", "label", "label_name", "source")
        .collect()
    }
    rows = agreement_metrics([r.asDict() for r in preds], feedback, current, now or utc_now())
    if not rows:
        return None
    return _arrow_frame(
        spark, pa.Table.from_pylist(rows, schema=lake_schemas.GOLD_REVIEW_AGREEMENT)
    )


def review_agreement(spark: Any, catalog: str | Deployment) -> dict[str, int]:
    """Append the agreement figures of verdict sets not evaluated yet to ``gold.review_agreement``
    (insert-only MERGE on the deterministic evaluation_id: an unchanged set writes nothing)."""
    names = {view: table_name(catalog, spec) for view, spec in REVIEW_VIEWS.items()}
    if not spark.catalog.tableExists(names["feedback"]):
        return {}  # review tables not created yet (setup job, sql/13_review_tables.sql)
    tables = {view: spark.table(name) for view, name in names.items()}
    rows = decide_review_agreement(spark, tables)
    if rows is None:
        return {}
    target = table_name(catalog, lake_schemas.REVIEW_AGREEMENT)
    return merge_into(rows, target, lake_schemas.REVIEW_AGREEMENT.keys, update=False)


def serving_comparison(
    spark: Any,
    catalog: str | Deployment,
    serving_endpoint: str,
    readers_group: str,
    engineers_group: str | None = None,
    promote_version: str | None = None,
) -> str:
    """The serving comparison job (`cxrlake.spark.serving.run_comparison_job`): the ai_query
    function over the endpoint, ``gold.champion_challenger_comparison`` from its inference
    table, and with ``promote_version`` the ``@champion`` move after it. Returns the report."""
    from cxrlake.spark.serving import run_comparison_job

    return run_comparison_job(
        spark,
        _deployment(catalog),
        serving_endpoint,
        readers_group,
        engineers_group,
        promote_version,
    )


def _sql_dir(sql_dir: str | os.PathLike[str] | None) -> Path:
    path = Path(sql_dir) if sql_dir else sql_files.default_sql_dir()
    if not path.is_dir():
        raise JobParameterError(f"sql directory {str(path)!r} not found")
    return path


def create_tables(
    spark: Any, catalog: str | Deployment, sql_dir: str | os.PathLike[str] | None = None
) -> int:
    """Run the DDL of `TABLES_SQL` (schemas, volumes, tables with CDF, dataset summary view).
    Idempotent. Returns the number of statements run."""
    directory = _sql_dir(sql_dir)
    params = _deployment(catalog).sql_params()
    count = sum(sql_files.run_sql_file(spark, directory / name, params) for name in TABLES_SQL)
    # Tables created by an earlier version lack the columns added since: add them (NULL in the
    # rows already written), as the local engine's `Lakehouse.add_columns` does.
    for spec in lake_schemas.TABLES:
        target = table_name(catalog, spec)
        statement = add_columns_statement(target, spec, spark.table(target).columns)
        if statement:
            spark.sql(statement)
            count += 1
    return count


def add_columns_statement(target: str, spec: TableSpec, existing: Iterable[str]) -> str | None:
    """``ALTER TABLE target ADD COLUMNS (...)`` for the nullable columns of ``spec`` that a table
    with columns ``existing`` lacks (https://docs.databricks.com/aws/en/sql/language-manual/sql-ref-syntax-ddl-alter-table-manage-column);
    None when none is missing. A missing required column is an error naming it."""
    import pyarrow as pa

    from cxrlake.spark.schemas import to_spark_schema

    have = {c.lower() for c in existing}
    missing = [f for f in spec.arrow_schema if f.name.lower() not in have]
    if not missing:
        return None
    required = [f.name for f in missing if not f.nullable]
    if required:
        raise ValueError(
            f"{target} lacks required column(s) {', '.join(required)}: rebuild the table"
        )
    columns = ", ".join(
        f"`{f.name}` {spark_type_ddl(f.dataType)}" for f in to_spark_schema(pa.schema(missing))
    )
    return f"ALTER TABLE {target} ADD COLUMNS ({columns})"


def spark_type_ddl(data_type: Any) -> str:
    """SQL of a Spark type with the field names of structs as they are (back-quoted): keywords
    in capitals, names never (``STRUCT<`rows`: INT>``; the table's nested fields keep the
    schema's case)."""
    from pyspark.sql import types as T

    if isinstance(data_type, T.StructType):
        fields = ", ".join(f"`{f.name}`: {spark_type_ddl(f.dataType)}" for f in data_type.fields)
        return f"STRUCT<{fields}>"
    if isinstance(data_type, T.ArrayType):
        return f"ARRAY<{spark_type_ddl(data_type.elementType)}>"
    if isinstance(data_type, T.MapType):
        return f"MAP<{spark_type_ddl(data_type.keyType)}, {spark_type_ddl(data_type.valueType)}>"
    return data_type.simpleString().upper()


def newest_wheel(wheel_glob: str) -> Path:
    """The most recently modified file matching ``wheel_glob`` (a cxrlake-*.whl pattern)."""
    if not wheel_glob.endswith(".whl"):
        raise JobParameterError(f"wheel_glob {wheel_glob!r} does not name .whl files")
    matches = [Path(p) for p in glob.glob(wheel_glob)]
    if not matches:
        raise JobParameterError(f"no wheel matches {wheel_glob!r}: deploy the bundle first")
    return max(matches, key=lambda p: p.stat().st_mtime)


def create_sql_functions(
    spark: Any,
    catalog: str | Deployment,
    wheel_glob: str,
    readers_group: str,
    sql_dir: str | os.PathLike[str] | None = None,
    engineers_group: str | None = None,
) -> str:
    """Copy the newest wheel matching ``wheel_glob`` into ``/Volumes/<catalog>/models/libraries``
    and create ``models.predict_image`` (batch Python UDF, the wheel as ENVIRONMENT dependency)
    and ``bronze.predict(path)``, granting EXECUTE to ``readers_group``. Returns the wheel path."""
    deployment = _deployment(catalog)
    wheel = newest_wheel(wheel_glob)
    target = f"{deployment.volume_path('models', 'libraries')}/{wheel.name}"
    shutil.copyfile(wheel, storage_path(target))
    params = {
        **deployment.sql_params(),
        "wheel_path": target,
        "readers_group": validate_principal(readers_group),
        "engineers_group": validate_principal(engineers_group or readers_group),
    }
    sql_files.run_sql_file(spark, _sql_dir(sql_dir) / FUNCTIONS_SQL, params)
    return target


def grant_review_app(
    spark: Any,
    catalog: str | Deployment,
    app_principal: str,
    sql_dir: str | os.PathLike[str] | None = None,
) -> int:
    """Grant the review app's service principal (``app_principal``, its application ID) the
    tables it reads and writes (`REVIEW_APP_GRANTS_SQL`). The setup job runs this after
    `create_tables`: the tables do not exist when the bundle deploys, so the app's bundle
    resources cannot name them. Returns the number of statements run."""
    params = {
        **_deployment(catalog).sql_params(),
        "app_principal": validate_principal(app_principal),
    }
    return sql_files.run_sql_file(spark, _sql_dir(sql_dir) / REVIEW_APP_GRANTS_SQL, params)


def maintain(
    spark: Any,
    catalog: str | Deployment,
    retain_hours: int,
    sql_dir: str | os.PathLike[str] | None = None,
) -> int:
    """OPTIMIZE (liquid clustering) and VACUUM every table; return the statements run."""
    params = {
        **_deployment(catalog).sql_params(),
        "retain_hours": validate_retain_hours(retain_hours),
    }
    return sql_files.run_sql_file(spark, _sql_dir(sql_dir) / MAINTENANCE_SQL, params)
