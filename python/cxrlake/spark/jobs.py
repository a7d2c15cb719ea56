"""What the Databricks notebooks in ``jobs/`` run: validated parameters in, tables written.

Each notebook reads its widgets, validates them with the ``validate_*`` functions here and calls
one entry point (`ingest_bronze`, `transform_silver`, `predict_gold`, `maintain`,
`create_tables`, `create_sql_functions`). ``catalog`` is a `Deployment` (catalog and the schema
names the bundle deployed, from `validate_deployment`) or, without a bundle, a catalog name
(undecorated schema names). The image work is the ``mapInArrow`` transforms of
`cxrlake.spark.transforms`; writes are Delta ``MERGE`` statements keyed as in
`cxrlake.lakehouse.schemas` (bronze is insert-only on (image_id, content_sha256)), so re-running
a job, or retrying a micro-batch, never duplicates a row.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from cxrlake.lakehouse import schemas as lake_schemas
from cxrlake.lakehouse.schemas import TableSpec
from cxrlake.spark import sql_files
from cxrlake.spark.deployment import Deployment, DeploymentError

CATALOG = re.compile(r"healthcare_catalog_[a-z0-9_]+")
VOLUME_PATH = re.compile(
    r"/Volumes/[A-Za-z0-9_]+/[A-Za-z0-9_]+/[A-Za-z0-9_]+(?:/[A-Za-z0-9_.=-]+)*/?"
)
MIN_RETAIN_HOURS = 168
TABLES_SQL = (
    "10_bronze_tables.sql",
    "11_silver_tables.sql",
    "12_gold_tables.sql",
    "20_dataset_summary_view.sql",
)
"""Files `create_tables` runs, in order. Not 00_catalog.sql (a metastore admin runs it) nor
01_schemas.sql / 02_volumes.sql: the bundle owns the schemas and volumes."""
FUNCTIONS_SQL = "30_predict_function.sql"
MAINTENANCE_SQL = "90_maintenance.sql"


class JobParameterError(ValueError):
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
    catalog: str, bronze_schema: str, silver_schema: str, gold_schema: str, models_schema: str
) -> Deployment:
    """The catalog and the schema names the bundle deployed (job parameters
    ``${resources.schemas.<key>.name}``: ``dev_<user>_bronze`` ... in development mode)."""
    try:
        return Deployment.from_parameters(
            catalog, bronze_schema, silver_schema, gold_schema, models_schema
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
    view = f"cxrlake_merge_{uuid.uuid4().hex}"
    df.dropDuplicates(list(keys)).createOrReplaceTempView(view)
    try:
        rows = df.sparkSession.sql(merge_statement(target, view, keys, update)).collect()
    finally:
        df.sparkSession.catalog.dropTempView(view)
    metrics = rows[0].asDict() if rows else {}
    return {k: int(v) for k, v in metrics.items() if isinstance(v, int)}


def _batch_id(prefix: str, when: dt.datetime) -> str:
    return f"{prefix}-{when:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def ingest_bronze(
    spark: Any, catalog: str | Deployment, source_path: str, checkpoint_path: str
) -> dict[str, Any]:
    """Auto Loader (``cloudFiles.format = binaryFile``, trigger ``availableNow``) from the volume
    ``source_path`` into ``bronze.kaggle_xray_metadata``; each micro-batch is MERGEd insert-only on
    (image_id, content_sha256), so a retried batch adds nothing. Returns the query's progress."""
    from cxrlake.spark.transforms import to_bronze
    from cxrlake.spark.udfs import configure_session

    configure_session(spark)
    target = table_name(catalog, lake_schemas.BRONZE)

    def merge_batch(batch_df: Any, batch_id: int) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        rows = to_bronze(batch_df, f"autoloader-{batch_id:06d}-{now:%Y%m%dT%H%M%SZ}", now)
        merge_into(rows, target, lake_schemas.BRONZE.keys, update=False)

    stream = (
        spark.readStream.format("cloudFiles")
        .option("cloudFiles.format", "binaryFile")
        # Every file, images or not: what cannot be decoded is quarantined by silver, with the
        # reason. (Names starting with '_' or '.' are skipped by the file source, as are
        # zero-byte files.)
        .load(source_path)
    )
    query = (
        stream.writeStream.foreachBatch(merge_batch)
        .option("checkpointLocation", checkpoint_path)
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


def _latest_bronze(spark: Any, catalog: str) -> Any:
    """The latest version (by ingested_at) of every image in bronze."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    bronze = spark.table(table_name(catalog, lake_schemas.BRONZE))
    w = Window.partitionBy("image_id").orderBy(F.col("ingested_at").desc(), F.col("content_sha256"))
    return bronze.withColumn("_rank", F.row_number().over(w)).where("_rank = 1").drop("_rank")


def transform_silver(
    spark: Any, catalog: str | Deployment, model: str | None = None
) -> dict[str, Any]:
    """Decode and validate bronze images not yet in silver (new image or new bytes) with the Rust
    core; MERGE ``silver.xray_metadata`` / ``silver.image_features`` / ``silver.quarantine`` on
    image_id, and drop quarantine rows of images that now pass. Returns row counts."""
    from cxrlake.spark.transforms import to_silver
    from cxrlake.spark.udfs import configure_session

    configure_session(spark)
    silver_t = table_name(catalog, lake_schemas.SILVER)
    features_t = table_name(catalog, lake_schemas.FEATURES)
    quarantine_t = table_name(catalog, lake_schemas.QUARANTINE)
    done = (
        spark.table(silver_t)
        .select("image_id", "content_sha256")
        .unionByName(spark.table(quarantine_t).select("image_id", "content_sha256"))
    )
    todo = _latest_bronze(spark, catalog).join(done, ["image_id", "content_sha256"], "left_anti")
    frames = to_silver(todo, model=model)
    counts = {
        "metadata": merge_into(frames.metadata, silver_t, lake_schemas.SILVER.keys, update=True),
        "features": merge_into(
            frames.features, features_t, lake_schemas.FEATURES.keys, update=True
        ),
        "quarantine": merge_into(
            frames.quarantine, quarantine_t, lake_schemas.QUARANTINE.keys, update=True
        ),
    }
    spark.sql(
        f"DELETE FROM {quarantine_t} AS q WHERE EXISTS "
        f"(SELECT 1 FROM {silver_t} AS s WHERE s.image_id = q.image_id "
        f"AND s.content_sha256 <=> q.content_sha256)"
    )
    spark.catalog.clearCache()
    return counts


def predict_gold(spark: Any, catalog: str | Deployment, model: str | None = None) -> dict[str, Any]:
    """Score silver images without a prediction of this model version for their current bytes;
    MERGE ``gold.pneumonia_predictions`` on (image_id, model_name, model_version); then add the
    ``gold.model_performance`` rows of this model whose prediction set changed (insert-only on the
    deterministic evaluation_id, so an unchanged run writes nothing)."""
    from pyspark.sql import functions as F

    from cxrlake.spark.transforms import gold_input, model_performance, to_gold_predictions
    from cxrlake.spark.udfs import configure_session, model_for

    configure_session(spark)
    loaded = model_for(model)
    predictions_t = table_name(catalog, lake_schemas.PREDICTIONS)
    performance_t = table_name(catalog, lake_schemas.PERFORMANCE)
    existing = (
        spark.table(predictions_t)
        .where((F.col("model_name") == loaded.name) & (F.col("model_version") == loaded.version))
        .select("image_id", "content_sha256")
    )
    silver = spark.table(table_name(catalog, lake_schemas.SILVER)).join(
        existing, ["image_id", "content_sha256"], "left_anti"
    )
    scoring = gold_input(spark.table(table_name(catalog, lake_schemas.BRONZE)), silver)
    predictions = to_gold_predictions(scoring, model=model)
    counts = {
        "predictions": merge_into(
            predictions, predictions_t, lake_schemas.PREDICTIONS.keys, update=True
        )
    }
    this_model = spark.table(predictions_t).where(
        (F.col("model_name") == loaded.name) & (F.col("model_version") == loaded.version)
    )
    performance = model_performance(this_model, model=model)
    if performance.num_rows:
        from cxrlake.spark.schemas import GOLD_PERFORMANCE

        rows = spark.createDataFrame(performance.to_pandas(), schema=GOLD_PERFORMANCE)
        counts["performance"] = merge_into(
            rows, performance_t, lake_schemas.PERFORMANCE.keys, update=False
        )
    return counts


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
    return sum(sql_files.run_sql_file(spark, directory / name, params) for name in TABLES_SQL)


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
    shutil.copyfile(wheel, target)
    params = {
        **deployment.sql_params(),
        "wheel_path": target,
        "readers_group": validate_principal(readers_group),
        "engineers_group": validate_principal(engineers_group or readers_group),
    }
    sql_files.run_sql_file(spark, _sql_dir(sql_dir) / FUNCTIONS_SQL, params)
    return target


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
