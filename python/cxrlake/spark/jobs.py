"""What the Databricks notebooks in ``jobs/`` run: validated parameters in, tables written.

Each notebook reads its widgets, validates them with the ``validate_*`` functions here and calls
one entry point (`ingest_bronze`, `transform_silver`, `predict_gold`, `maintain`,
`create_tables`, `create_sql_functions`). ``catalog`` is a `Deployment` (catalog and the schema
names the bundle deployed, from `validate_deployment`) or, without a bundle, a catalog name
(undecorated schema names). The image work is the ``mapInArrow`` transforms of
`cxrlake.spark.transforms`, the decisions the stages of `cxrlake.spark.stages`; every write goes
through `cxrlake.spark.catalog.SparkCatalog` as Delta ``MERGE`` statements keyed as in
`cxrlake.medallion.schemas` (bronze is insert-only on (image_id, content_sha256)), so re-running
a job, or retrying a micro-batch, never duplicates a row.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from cxrlake import deid, metrics_service
from cxrlake.exceptions import InvalidArgumentError
from cxrlake.medallion import rules
from cxrlake.medallion import schemas as lake_schemas
from cxrlake.medallion.schemas import TableSpec
from cxrlake.model import Model
from cxrlake.spark import parameters, sql_files
from cxrlake.spark.catalog import SparkCatalog, add_columns_statement
from cxrlake.spark.deployment import Deployment, DeploymentError
from cxrlake.spark.frames import arrow_frame, materialise
from cxrlake.spark.local_runtime import storage_path
from cxrlake.spark.parameters import JobParameterError, validate_principal
from cxrlake.spark.serving import run_comparison_job
from cxrlake.spark.site_thresholds import spark_site_threshold
from cxrlake.spark.stages import (
    BRONZE_STAT_COLUMNS,
    REDECIDED_COLUMNS,
    TableChange,
    bronze_stats,
    decide_analysis,
    decide_drift,
    decide_performance,
    decide_redecide,
    identity_roots,
    state_tables,
)
from cxrlake.spark.transforms import to_bronze
from cxrlake.spark.udfs import configure_session, model_for
from cxrlake.threshold import SiteThreshold

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
INSERT_ONLY = (lake_schemas.BRONZE, lake_schemas.PERFORMANCE)
"""Tables whose rows are never updated by a MERGE: bronze (append-only) and the evaluations."""


class Secrets(Protocol):
    """``dbutils.secrets`` of a Databricks notebook."""

    def get(self, scope: str, key: str) -> str: ...


class DBUtils(Protocol):
    """The part of a notebook's ``dbutils`` the jobs use."""

    secrets: Secrets


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


def validate_retain_hours(value: str | int) -> int:
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


def spark_catalog(spark: SparkSession, catalog: str | Deployment) -> SparkCatalog:
    """The `SparkCatalog` of a deployment (or of a bare catalog name)."""
    return SparkCatalog(spark, _deployment(catalog))


def table_name(catalog: str | Deployment, spec: TableSpec) -> str:
    """``<catalog>.<schema>.<table>`` of a lakehouse table, with the deployed schema name."""
    return _deployment(catalog).table(spec.qualified_name)


def apply_changes(
    spark: SparkSession, catalog: str | Deployment, changes: Mapping[str, TableChange]
) -> dict[str, object]:
    """Write a stage's decision to the catalog's Delta tables: per table, the MERGE of its
    upserts (insert-only for bronze and performance), then the bronze stat refresh, then the
    deletes. Each statement is idempotent, so a job stopped between two of them is finished by
    the next run, whose rules select what is left. Returns Delta's row counts per table."""
    tables = spark_catalog(spark, catalog)
    counts: dict[str, object] = {}
    for view, change in changes.items():
        spec = rules.VIEWS[view]
        done: dict[str, dict[str, int]] = {}
        if change.upserts is not None:
            update = spec not in INSERT_ONLY
            done["merge"] = tables.merge_frame(
                spec, change.upserts, update=update, operation=f"{view}-merge"
            )
        if change.updates is not None:
            done["stats"] = tables.update_frame(
                spec, change.updates, BRONZE_STAT_COLUMNS, operation=f"{view}-stats"
            )
        if change.deletes is not None:
            done["delete"] = tables.delete_frame(spec, change.deletes, operation=f"{view}-delete")
        counts[view] = done
    spark.catalog.clearCache()
    return counts


def write_drift(
    spark: SparkSession, catalog: str | Deployment, model: Model, now: dt.datetime | None = None
) -> dict[str, int]:
    """MERGE `cxrlake.spark.stages.decide_drift`'s rows into ``gold.drift_metrics`` on its
    keys."""
    tables = spark_catalog(spark, catalog)
    rows = decide_drift(tables, model, now)
    return tables.merge_frame(lake_schemas.DRIFT_METRICS, rows, operation="drift")


def redecide(
    spark: SparkSession,
    catalog: str | Deployment,
    model: Model,
    threshold: SiteThreshold | None,
) -> int:
    """Apply `cxrlake.spark.stages.decide_redecide` to ``gold.pneumonia_predictions``; return
    the rows re-decided."""
    tables = spark_catalog(spark, catalog)
    spec = lake_schemas.PREDICTIONS
    updates = decide_redecide(spark, {"predictions": tables.frame(spec)}, model, threshold)
    counts = tables.update_frame(
        spec, materialise(updates), REDECIDED_COLUMNS, operation="predictions-redecide"
    )
    spark.catalog.clearCache()
    return int(counts.get("num_updated_rows", 0))


def review_agreement(spark: SparkSession, catalog: str | Deployment) -> dict[str, int]:
    """Append the agreement figures of verdict sets not evaluated yet to ``gold.review_agreement``
    (`cxrlake.metrics_service.review_agreement` over the `SparkCatalog`, the rows the review app
    computes; insert-only MERGE on the deterministic evaluation_id: an unchanged set writes
    nothing)."""
    tables = spark_catalog(spark, catalog)
    if not tables.exists(lake_schemas.FEEDBACK):
        return {}  # review tables not created yet (setup job, sql/13_review_tables.sql)
    rows = metrics_service.review_agreement(tables)
    if not rows:
        return {}
    spec = lake_schemas.REVIEW_AGREEMENT
    frame = arrow_frame(spark, pa.Table.from_pylist(rows, schema=spec.arrow_schema))
    return tables.merge_frame(spec, frame, update=False, operation="review-agreement")


def ingest_bronze(
    spark: SparkSession, catalog: str | Deployment, source_path: str, checkpoint_path: str
) -> dict[str, object]:
    """Auto Loader (``cloudFiles.format = binaryFile``, trigger ``availableNow``) from the volume
    ``source_path`` into ``bronze.kaggle_xray_metadata``; each micro-batch goes through the bronze
    rules (`rules.BRONZE_INSERTS`, `rules.BRONZE_STAT_UPDATES`) and is MERGEd insert-only on
    (image_id, content_sha256), so a retried batch adds nothing. Returns the query's progress."""
    configure_session(spark)
    deployment = _deployment(catalog)
    source_path = storage_path(source_path)

    def merge_batch(batch_df: DataFrame, batch_id: int) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        ingestion_id = f"autoloader-{batch_id:06d}-{now:%Y%m%dT%H%M%SZ}"
        session = batch_df.sparkSession
        tables = SparkCatalog(session, deployment)
        spec = lake_schemas.BRONZE
        tables.frame(spec).select(*rules.STATE_COLUMNS["bronze"]).createOrReplaceTempView("bronze")
        roots = identity_roots(session.table("bronze"), source_path)
        to_bronze(batch_df, ingestion_id, now, roots).createOrReplaceTempView("incoming")
        stats = bronze_stats(session, now, ingestion_id)
        tables.update_frame(spec, stats, BRONZE_STAT_COLUMNS, operation="bronze-stats")
        rows = session.sql(rules.BRONZE_INSERTS)
        tables.merge_frame(spec, rows, update=False, operation="bronze-merge")

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
        "target": table_name(deployment, lake_schemas.BRONZE),
        "micro_batches": len(progress),
        "files": sum(int(p.get("numInputRows", 0)) for p in progress),
    }


def file_stream(spark: SparkSession, source_path: str) -> DataFrame:
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
    dbutils: DBUtils | None = None,
    scope: str = "cxrlake",
    name: str = "deid-key",
    environ: Mapping[str, str] | None = None,
) -> bytes | None:
    """The DICOM de-identification key on the driver: ``CXRLAKE_DEID_KEY``, else the secret
    ``scope``/``name`` through ``dbutils.secrets.get`` (https://docs.databricks.com/aws/en/security/secrets/);
    None when neither holds one (a run without DICOM files needs none; with DICOM rows the
    executors then fail naming both). A key shorter than 16 bytes raises InvalidArgumentError.
    The key is shipped to the tasks inside the ``mapInArrow`` closure, never written anywhere."""

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
    spark: SparkSession,
    catalog: str | Deployment,
    model: str | None = None,
    deid_key: bytes | None = None,
    dbutils: DBUtils | None = None,
) -> dict[str, object]:
    """Silver and gold in one pass: every image of bronze not in its end state (new image, new
    bytes, new model version, or left half-written by a stopped run) is decoded and scored once
    with the Rust core; silver, features, predictions and quarantine are MERGEd on their keys,
    and an image that now fails leaves silver and gold. DICOM metadata is de-identified with
    ``deid_key``, else the key `read_deid_key` finds (environment, or the secret through the
    notebook's ``dbutils``). Returns Delta's row counts."""
    if deid_key is None:
        deid_key = read_deid_key(dbutils, scope=_deployment(catalog).secret_scope)
    configure_session(spark)
    loaded = model_for(model)
    state = state_tables(spark_catalog(spark, catalog))
    changes = decide_analysis(spark, state, loaded, model, deid_key=deid_key)
    return apply_changes(spark, catalog, changes)


def predict_gold(
    spark: SparkSession,
    catalog: str | Deployment,
    model: str | None = None,
    site: str | None = None,
    deid_key: bytes | None = None,
    dbutils: DBUtils | None = None,
) -> dict[str, object]:
    """Gold for ``model``: finish the analysis pass for this model version (images silver holds
    without its prediction are scored once, embedding and probability together), then append the
    ``gold.model_performance`` rows of this model whose prediction set changed (insert-only on the
    deterministic evaluation_id, so an unchanged run writes nothing). ``site``: labels are decided
    by that site's latest threshold for this model version in ``gold.site_thresholds`` (the
    model's own when none is stored); every prediction records which one decided. DICOM rows
    this pass analyses are de-identified as in `transform_silver` (``deid_key`` / ``dbutils``)."""
    if deid_key is None:
        deid_key = read_deid_key(dbutils, scope=_deployment(catalog).secret_scope)
    configure_session(spark)
    loaded = model_for(model)
    tables = spark_catalog(spark, catalog)
    threshold = spark_site_threshold(tables, site, loaded) if site else None
    analysis = decide_analysis(
        spark, state_tables(tables), loaded, model, threshold=threshold, deid_key=deid_key
    )
    counts = apply_changes(spark, catalog, analysis)
    # Labels of this model decided at another threshold (silver scored at the model's, or an
    # earlier run at another site's) are re-decided at this run's, so that the labels and the
    # metrics below agree: `rules.PREDICTIONS_TO_REDECIDE`, as the local engine does.
    counts["redecided"] = redecide(spark, catalog, loaded, threshold)
    performance = decide_performance(tables, loaded, threshold=threshold)
    counts.update(apply_changes(spark, catalog, performance))
    counts["threshold_source"] = threshold.source if threshold else "model"
    counts["drift"] = write_drift(spark, catalog, loaded)
    # model-radiologist agreement over the review app's verdicts (gold.review_agreement)
    for key, value in review_agreement(spark, catalog).items():
        counts[f"review_agreement_{key}"] = value
    return counts


def serving_comparison(
    spark: SparkSession,
    catalog: str | Deployment,
    serving_endpoint: str,
    readers_group: str,
    engineers_group: str | None = None,
    promote_version: str | None = None,
) -> str:
    """The serving comparison job (`cxrlake.spark.serving.run_comparison_job`): the ai_query
    function over the endpoint, ``gold.champion_challenger_comparison`` from its inference
    table, and with ``promote_version`` the ``@champion`` move after it. Returns the report."""
    return run_comparison_job(
        spark,
        _deployment(catalog),
        serving_endpoint,
        readers_group,
        engineers_group,
        promote_version,
    )


def create_tables(
    spark: SparkSession, catalog: str | Deployment, sql_dir: str | os.PathLike[str] | None = None
) -> int:
    """Run the DDL of `TABLES_SQL` (schemas, volumes, tables with CDF, dataset summary view).
    Idempotent. Returns the number of statements run."""
    directory = parameters.sql_dir(sql_dir)
    params = _deployment(catalog).sql_params()
    count = sum(sql_files.run_sql_file(spark, directory / name, params) for name in TABLES_SQL)
    # Tables created by an earlier version lack the columns added since: add them (NULL in the
    # rows already written), as the local engine's `Lakehouse.add_columns` does.
    tables = spark_catalog(spark, catalog)
    for spec in lake_schemas.TABLES:
        statement = add_columns_statement(tables.name(spec), spec, tables.columns(spec))
        if statement:
            spark.sql(statement)
            count += 1
    return count


def newest_wheel(wheel_glob: str) -> Path:
    """The most recently modified file matching ``wheel_glob`` (a cxrlake-*.whl pattern)."""
    if not wheel_glob.endswith(".whl"):
        raise JobParameterError(f"wheel_glob {wheel_glob!r} does not name .whl files")
    matches = [Path(p) for p in glob.glob(wheel_glob)]
    if not matches:
        raise JobParameterError(f"no wheel matches {wheel_glob!r}: deploy the bundle first")
    return max(matches, key=lambda p: p.stat().st_mtime)


def create_sql_functions(
    spark: SparkSession,
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
    sql_files.run_sql_file(spark, parameters.sql_dir(sql_dir) / FUNCTIONS_SQL, params)
    return target


def grant_review_app(
    spark: SparkSession,
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
    return sql_files.run_sql_file(
        spark, parameters.sql_dir(sql_dir) / REVIEW_APP_GRANTS_SQL, params
    )


def maintain(
    spark: SparkSession,
    catalog: str | Deployment,
    retain_hours: int,
    sql_dir: str | os.PathLike[str] | None = None,
) -> int:
    """OPTIMIZE (liquid clustering) and VACUUM every table; return the statements run."""
    params = {
        **_deployment(catalog).sql_params(),
        "retain_hours": validate_retain_hours(retain_hours),
    }
    return sql_files.run_sql_file(spark, parameters.sql_dir(sql_dir) / MAINTENANCE_SQL, params)
