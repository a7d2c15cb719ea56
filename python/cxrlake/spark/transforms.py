"""``mapInArrow`` transforms: a ``binaryFile`` DataFrame to the bronze, silver and gold tables.

Each transform wraps the pure batch function of the local pipeline
(`cxrlake.lakehouse.transforms`), so both engines produce the same rows (same image ids, same
quarantine rule, same prediction ids) in the same schemas (`cxrlake.spark.schemas`, derived from
`cxrlake.lakehouse.schemas`)::

    raw = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(dir)
    bronze = to_bronze(raw, ingestion_batch_id="run-1")
    silver = to_silver(bronze)              # SilverFrames(metadata, features, quarantine)
    gold = to_gold_predictions(gold_input(bronze, silver.metadata))

Timestamps (``ingested_at``, ``processed_at``, ``predicted_at``) are taken once on the driver and
shipped to the tasks, so every row of a run, and every retry of a task, carries the same value.
A file the core cannot decode ends in ``silver.quarantine`` with the core's error as reason; the
job never fails on a bad image.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cxrlake.lakehouse import schemas as lake_schemas
from cxrlake.lakehouse import transforms as lake
from cxrlake.spark import schemas
from cxrlake.spark.udfs import local_path, model_for

ArrowMap = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]

SILVER_PARTS = ("metadata", "features", "quarantine")
_SILVER_ARROW = {
    "metadata": lake_schemas.SILVER_METADATA,
    "features": lake_schemas.SILVER_FEATURES,
    "quarantine": lake_schemas.SILVER_QUARANTINE,
}
SILVER_COMBINED = T.StructType(
    [
        T.StructField(part, schemas.to_spark_schema(_SILVER_ARROW[part]), True)
        for part in SILVER_PARTS
    ]
)
"""Intermediate schema of `to_silver`: one struct column per silver table; each row holds either
``metadata`` and ``features`` or ``quarantine`` (every image is decoded once)."""


def _model_path(model: Any) -> str | None:
    return None if model is None else str(getattr(model, "path", model))


def _now(value: dt.datetime | None) -> dt.datetime:
    return value if value is not None else lake.utc_now()


def bronze_rows(ingestion_batch_id: str, ingested_at: dt.datetime) -> ArrowMap:
    """``mapInArrow`` function: ``binaryFile`` batches -> ``bronze.kaggle_xray_metadata`` batches.

    ``file_path`` is a path the core can open (``file:`` / ``dbfs:`` URIs become paths)."""

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            paths = pa.array([local_path(p) for p in batch.column("path").to_pylist()], pa.string())
            batch = batch.set_column(batch.schema.get_field_index("path"), "path", paths)
            yield lake.bronze_batch(batch, ingestion_batch_id, ingested_at)

    return fn


def to_bronze(
    binary_files: DataFrame, ingestion_batch_id: str, ingested_at: dt.datetime | None = None
) -> DataFrame:
    """Bronze rows (schema `schemas.BRONZE`) of a DataFrame shaped like Spark's ``binaryFile``
    source (``path``, ``modificationTime``, ``length``, ``content``)."""
    fn = bronze_rows(ingestion_batch_id, _now(ingested_at))
    return binary_files.select(*schemas.BINARY_FILE_SCHEMA.fieldNames()).mapInArrow(
        fn, schemas.BRONZE
    )


def silver_rows(model_path: str | None, processed_at: dt.datetime, threads: int | None) -> ArrowMap:
    """``mapInArrow`` function: bronze batches -> `SILVER_COMBINED` batches."""

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model = model_for(model_path)
        for batch in batches:
            parts = lake.silver_batch(
                batch, model=model, processed_at=processed_at, threads=threads
            )
            yield _combine(parts)

    return fn


def _combine(parts: lake.SilverBatches) -> pa.RecordBatch:
    """One batch with a struct column per silver table: the good rows first (``metadata`` and
    ``features`` set), then the quarantined rows (``quarantine`` set); the rest is NULL."""
    n_good, n_bad = parts.metadata.num_rows, parts.quarantine.num_rows
    columns = [
        _padded(parts.metadata, 0, n_bad),
        _padded(parts.features, 0, n_bad),
        _padded(parts.quarantine, n_good, 0),
    ]
    return pa.RecordBatch.from_arrays(columns, names=list(SILVER_PARTS))


def _padded(batch: pa.RecordBatch, before: int, after: int) -> pa.StructArray:
    """``batch`` as a struct array with ``before`` NULL rows in front and ``after`` behind."""
    fields = list(batch.schema)
    arrays = [
        pa.concat_arrays([pa.nulls(before, f.type), batch.column(i), pa.nulls(after, f.type)])
        for i, f in enumerate(fields)
    ]
    mask = pa.array([True] * before + [False] * batch.num_rows + [True] * after, pa.bool_())
    return pa.StructArray.from_arrays(arrays, fields=fields, mask=mask)


def _unwrap(part: str) -> ArrowMap:
    """``mapInArrow`` function: the struct column ``part`` of `SILVER_COMBINED` as a table batch."""

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            struct = batch.column(part)
            yield pa.RecordBatch.from_arrays(
                [struct.field(i) for i in range(struct.type.num_fields)],
                schema=_SILVER_ARROW[part],
            )

    return fn


class SilverFrames(NamedTuple):
    """Output of `to_silver`: one DataFrame per silver table."""

    metadata: DataFrame  # schemas.SILVER_METADATA
    features: DataFrame  # schemas.SILVER_FEATURES
    quarantine: DataFrame  # schemas.SILVER_QUARANTINE


def to_silver(
    bronze: DataFrame,
    model: Any = None,
    processed_at: dt.datetime | None = None,
    threads: int | None = None,
    persist: bool = True,
) -> SilverFrames:
    """Decode and validate bronze rows (schema `schemas.BRONZE`) with the Rust core.

    Every image is decoded once: the combined result is persisted (it holds no image bytes) and
    split into the three silver tables, each in its exact schema. Unpersist ``metadata``'s parent
    with `SilverFrames` going out of use, or call ``spark.catalog.clearCache()``.
    """
    fn = silver_rows(_model_path(model), _now(processed_at), threads)
    combined = bronze.select(*schemas.BRONZE.fieldNames()).mapInArrow(fn, SILVER_COMBINED)
    if persist:
        combined = combined.persist()
    frames = {
        part: combined.where(F.col(part).isNotNull()).mapInArrow(
            _unwrap(part), schemas.to_spark_schema(_SILVER_ARROW[part])
        )
        for part in SILVER_PARTS
    }
    return SilverFrames(**frames)


GOLD_INPUT_COLUMNS = ("image_id", "label", "dataset_split", "content_sha256", "content")


def gold_input(bronze: DataFrame, silver_metadata: DataFrame) -> DataFrame:
    """Rows to score: silver images with their bytes from bronze (same ``content_sha256``)."""
    b = bronze.select("image_id", "content_sha256", "content").dropDuplicates(
        ["image_id", "content_sha256"]
    )
    s = silver_metadata.select("image_id", "label", "dataset_split", "content_sha256")
    return s.join(b, ["image_id", "content_sha256"], "inner").select(*GOLD_INPUT_COLUMNS)


def gold_rows(model_path: str | None, predicted_at: dt.datetime, threads: int | None) -> ArrowMap:
    """``mapInArrow`` function: scoring batches -> ``gold.pneumonia_predictions`` batches."""

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model = model_for(model_path)
        for batch in batches:
            yield lake.gold_predictions_batch(
                batch, model=model, predicted_at=predicted_at, threads=threads
            )

    return fn


def to_gold_predictions(
    scoring_input: DataFrame,
    model: Any = None,
    predicted_at: dt.datetime | None = None,
    threads: int | None = None,
) -> DataFrame:
    """Predictions (schema `schemas.GOLD_PREDICTIONS`) of rows with ``image_id``, ``label``,
    ``dataset_split``, ``content_sha256`` and ``content`` (see `gold_input`)."""
    fn = gold_rows(_model_path(model), _now(predicted_at), threads)
    return scoring_input.select(*GOLD_INPUT_COLUMNS).mapInArrow(fn, schemas.GOLD_PREDICTIONS)


def model_performance(
    predictions: DataFrame, model: Any = None, evaluated_at: dt.datetime | None = None
) -> pa.RecordBatch:
    """``gold.model_performance`` rows of a predictions DataFrame, computed on the driver (one
    small row per prediction) by the local pipeline's `cxrlake.lakehouse.transforms`."""
    selected = predictions.select(*schemas.GOLD_PREDICTIONS.fieldNames())
    if hasattr(selected, "toArrow"):  # Spark >= 4.0
        table = selected.toArrow()
    else:  # Spark 3.5
        table = pa.Table.from_batches(selected._collect_as_arrow(), lake_schemas.GOLD_PREDICTIONS)
    threshold = model_for(_model_path(model)).threshold
    return lake.model_performance(table, threshold=threshold, evaluated_at=_now(evaluated_at))
