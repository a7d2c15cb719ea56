"""``mapInArrow`` transforms: a ``binaryFile`` DataFrame to the bronze, silver and gold tables.

Each transform wraps a batch function of the engine-neutral medallion
(`cxrlake.medallion.transforms`), the same the local engine calls, so both engines produce the
same rows (same image ids, same quarantine rule, same prediction ids) in the same schemas
(`cxrlake.spark.schemas`, derived from `cxrlake.medallion.schemas`)::

    raw = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(dir)
    bronze = to_bronze(raw, ingestion_batch_id="run-1")
    analyzed = to_analyzed(bronze)  # AnalyzedFrames(metadata, features, predictions, quarantine)

Timestamps (``ingested_at``, ``processed_at``, ``predicted_at``) are taken once on the driver and
shipped to the tasks, so every row of a run, and every retry of a task, carries the same value.
A file the core cannot decode ends in ``silver.quarantine`` with the core's error as reason; the
job never fails on a bad image.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cxrlake.files import has_no_extension, is_image_name, sniff_dicom
from cxrlake.medallion import identity, metrics, rules
from cxrlake.medallion import schemas as medallion_schemas
from cxrlake.medallion import transforms as medallion
from cxrlake.spark import schemas
from cxrlake.spark.frames import to_arrow
from cxrlake.spark.udfs import ModelLike, local_path, model_for, model_path_of
from cxrlake.threshold import SiteThreshold

ArrowMap = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]

ANALYZED_PARTS = ("metadata", "features", "predictions", "quarantine")
SILVER_PARTS = ("metadata", "features", "quarantine")
_ARROW = {
    "metadata": medallion_schemas.SILVER_METADATA,
    "features": medallion_schemas.SILVER_FEATURES,
    "predictions": medallion_schemas.GOLD_PREDICTIONS,
    "quarantine": medallion_schemas.SILVER_QUARANTINE,
}
ANALYZED_COMBINED = T.StructType(
    [T.StructField(part, schemas.to_spark_schema(_ARROW[part]), True) for part in ANALYZED_PARTS]
)
"""Intermediate schema of `to_analyzed`: one struct column per output table; each row holds
either ``metadata``, ``features`` and ``predictions`` or ``quarantine`` (one pass per image)."""
LISTING = schemas.to_spark_schema(rules.LISTING_SCHEMA)


def _now(value: dt.datetime | None) -> dt.datetime:
    return value if value is not None else identity.utc_now()


def bronze_rows(
    ingestion_batch_id: str, ingested_at: dt.datetime, roots: tuple[str, ...] = ()
) -> ArrowMap:
    """``mapInArrow`` function: ``binaryFile`` batches -> ``bronze.kaggle_xray_metadata`` batches.

    ``file_path`` is a path the core can open (``file:`` / ``dbfs:`` URIs become paths). Files
    whose names are not image names (`cxrlake.files.is_image_name`) are dropped, so Auto Loader
    skips them as the listings of both engines do; a name without an extension is kept when its
    content is DICOM. ``roots``: the sources whose files follow identity rule 2
    (`cxrlake.medallion.identity.identity_roots`)."""

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            paths = batch.column("path").to_pylist()
            named = pa.array([is_image_name(p) for p in paths], pa.bool_())
            bare = pa.array([has_no_extension(p) for p in paths], pa.bool_())
            dicom = medallion.is_dicom_content(batch.column("content"))
            batch = batch.filter(pc.or_(named, pc.and_(bare, dicom)))
            paths = pa.array([local_path(p) for p in batch.column("path").to_pylist()], pa.string())
            batch = batch.set_column(batch.schema.get_field_index("path"), "path", paths)
            yield medallion.bronze_batch(batch, ingestion_batch_id, ingested_at, roots=roots)

    return fn


def to_bronze(
    binary_files: DataFrame,
    ingestion_batch_id: str,
    ingested_at: dt.datetime | None = None,
    roots: tuple[str, ...] = (),
) -> DataFrame:
    """Bronze rows (schema `schemas.BRONZE`) of a DataFrame shaped like Spark's ``binaryFile``
    source (``path``, ``modificationTime``, ``length``, ``content``); ``roots`` as in
    `bronze_rows`."""
    fn = bronze_rows(ingestion_batch_id, _now(ingested_at), tuple(roots))
    return binary_files.select(*schemas.BINARY_FILE_SCHEMA.fieldNames()).mapInArrow(
        fn, schemas.BRONZE
    )


def listing_rows(roots: tuple[str, ...] = ()) -> ArrowMap:
    """``mapInArrow`` function: ``binaryFile`` listing batches (``path``, ``modificationTime``,
    ``length``) -> rows of the rules' ``listing`` view (`rules.LISTING_SCHEMA`). Files whose
    names are not image names (`cxrlake.files.is_image_name`, as in the local listing) are
    dropped: never read, stored nor quarantined; a name without an extension is kept when the
    file starts like DICOM (`cxrlake.files.sniff_dicom` reads its first 132 bytes). ``roots``
    as in `bronze_rows`."""

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            keep = [
                is_image_name(p) or (has_no_extension(p) and sniff_dicom(local_path(p)))
                for p in batch.column("path").to_pylist()
            ]
            batch = batch.filter(pa.array(keep, pa.bool_()))
            paths = pa.array([local_path(p) for p in batch.column("path").to_pylist()], pa.string())
            ids = identity.identify_paths(paths, roots)
            yield pa.RecordBatch.from_arrays(
                [
                    paths,
                    ids.column("image_id"),
                    batch.column("length").cast(pa.int64()),
                    batch.column("modificationTime").cast(medallion_schemas.TS),
                    pa.nulls(batch.num_rows, pa.string()),
                ],
                schema=rules.LISTING_SCHEMA,
            )

    return fn


def to_listing(binary_files: DataFrame, roots: tuple[str, ...] = ()) -> DataFrame:
    """The ``listing`` view of the rules from a ``binaryFile`` DataFrame (content not read);
    ``roots`` as in `bronze_rows`."""
    return binary_files.select("path", "modificationTime", "length").mapInArrow(
        listing_rows(tuple(roots)), LISTING
    )


def listing_quarantine_rows(ingestion_batch_id: str, quarantined_at: dt.datetime) -> ArrowMap:
    """``mapInArrow`` function: held listing rows (``image_id``, ``file_path``, ``reason``) ->
    ``silver.quarantine`` rows (stage ``listing``)."""

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield medallion.listing_quarantine_batch(
                batch.column("file_path"),
                batch.column("reason"),
                ingestion_batch_id,
                quarantined_at,
                image_ids=batch.column("image_id"),
            )

    return fn


def analyzed_rows(
    model_path: str | None,
    processed_at: dt.datetime,
    threads: int | None,
    threshold: SiteThreshold | None = None,
    deid_key: bytes | None = None,
) -> ArrowMap:
    """``mapInArrow`` function: bronze batches -> `ANALYZED_COMBINED` batches (labels decided by
    ``threshold``, a `cxrlake.calibration.SiteThreshold`, when given; DICOM metadata
    de-identified with ``deid_key``, else the executor's ``CXRLAKE_DEID_KEY``)."""

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model = model_for(model_path)
        for batch in batches:
            parts = medallion.analyze_batch(
                batch,
                model=model,
                processed_at=processed_at,
                threads=threads,
                threshold=threshold,
                deid_key=deid_key,
            )
            yield _combine(parts)

    return fn


def _combine(parts: medallion.AnalyzedBatches) -> pa.RecordBatch:
    """One batch with a struct column per table: the good rows first (``metadata``, ``features``
    and ``predictions`` set), then the quarantined rows (``quarantine`` set); the rest is NULL."""
    n_good, n_bad = parts.metadata.num_rows, parts.quarantine.num_rows
    columns = [
        _padded(parts.metadata, 0, n_bad),
        _padded(parts.features, 0, n_bad),
        _padded(parts.predictions, 0, n_bad),
        _padded(parts.quarantine, n_good, 0),
    ]
    return pa.RecordBatch.from_arrays(columns, names=list(ANALYZED_PARTS))


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
    """``mapInArrow`` function: the struct column ``part`` of `ANALYZED_COMBINED` as a batch."""

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            struct = batch.column(part)
            yield pa.RecordBatch.from_arrays(
                [struct.field(i) for i in range(struct.type.num_fields)], schema=_ARROW[part]
            )

    return fn


class AnalyzedFrames(NamedTuple):
    """Output of `to_analyzed`: one DataFrame per table the analysis pass writes."""

    metadata: DataFrame  # schemas.SILVER_METADATA
    features: DataFrame  # schemas.SILVER_FEATURES
    predictions: DataFrame  # schemas.GOLD_PREDICTIONS
    quarantine: DataFrame  # schemas.SILVER_QUARANTINE


def to_analyzed(
    bronze: DataFrame,
    model: ModelLike = None,
    processed_at: dt.datetime | None = None,
    threads: int | None = None,
    persist: bool = True,
    threshold: SiteThreshold | None = None,
    deid_key: bytes | None = None,
) -> AnalyzedFrames:
    """Decode, validate and score bronze rows (columns `medallion.BRONZE_ANALYZE_COLUMNS`) with
    one pass of the Rust core per image.

    The combined result is persisted (it holds no image bytes) and split into the four tables,
    each in its exact schema, so no later action runs the images through the network again. Call
    ``spark.catalog.clearCache()`` once the frames are written. ``deid_key``: the
    de-identification key for DICOM metadata (`cxrlake.spark.jobs.read_deid_key` reads it on the
    driver); None = each executor's ``CXRLAKE_DEID_KEY``, needed only when DICOM rows come.
    """
    fn = analyzed_rows(model_path_of(model), _now(processed_at), threads, threshold, deid_key)
    combined = bronze.select(*medallion.BRONZE_ANALYZE_COLUMNS).mapInArrow(fn, ANALYZED_COMBINED)
    if persist:
        combined = combined.persist()
    frames = {
        part: combined.where(F.col(part).isNotNull()).mapInArrow(
            _unwrap(part), schemas.to_spark_schema(_ARROW[part])
        )
        for part in ANALYZED_PARTS
    }
    return AnalyzedFrames(**frames)


class SilverFrames(NamedTuple):
    """The silver part of `to_analyzed`: one DataFrame per silver table."""

    metadata: DataFrame  # schemas.SILVER_METADATA
    features: DataFrame  # schemas.SILVER_FEATURES
    quarantine: DataFrame  # schemas.SILVER_QUARANTINE


def to_silver(
    bronze: DataFrame,
    model: ModelLike = None,
    processed_at: dt.datetime | None = None,
    threads: int | None = None,
    persist: bool = True,
    deid_key: bytes | None = None,
) -> SilverFrames:
    """The silver tables of `to_analyzed` (metadata, features, quarantine)."""
    frames = to_analyzed(bronze, model, processed_at, threads, persist, deid_key=deid_key)
    return SilverFrames(frames.metadata, frames.features, frames.quarantine)


GOLD_INPUT_COLUMNS = medallion.GOLD_INPUT_COLUMNS


def gold_input(bronze: DataFrame, silver_metadata: DataFrame) -> DataFrame:
    """Rows to score: silver images with their bytes from bronze (same ``content_sha256``)."""
    b = bronze.select("image_id", "content_sha256", "content").dropDuplicates(
        ["image_id", "content_sha256"]
    )
    s = silver_metadata.select("image_id", "label", "dataset_split", "content_sha256")
    return s.join(b, ["image_id", "content_sha256"], "inner").select(*GOLD_INPUT_COLUMNS)


def gold_rows(
    model_path: str | None,
    predicted_at: dt.datetime,
    threads: int | None,
    threshold: SiteThreshold | None = None,
) -> ArrowMap:
    """``mapInArrow`` function: scoring batches -> ``gold.pneumonia_predictions`` batches."""

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model = model_for(model_path)
        for batch in batches:
            yield medallion.gold_predictions_batch(
                batch, model=model, predicted_at=predicted_at, threads=threads, threshold=threshold
            )

    return fn


def to_gold_predictions(
    scoring_input: DataFrame,
    model: ModelLike = None,
    predicted_at: dt.datetime | None = None,
    threads: int | None = None,
    threshold: SiteThreshold | None = None,
) -> DataFrame:
    """Predictions (schema `schemas.GOLD_PREDICTIONS`) of rows with ``image_id``, ``label``,
    ``dataset_split``, ``content_sha256`` and ``content`` (see `gold_input`); ``threshold``: a
    site's `cxrlake.threshold.SiteThreshold`
    (`cxrlake.spark.site_thresholds.spark_site_threshold`)."""
    fn = gold_rows(model_path_of(model), _now(predicted_at), threads, threshold)
    return scoring_input.select(*GOLD_INPUT_COLUMNS).mapInArrow(fn, schemas.GOLD_PREDICTIONS)


def model_performance(
    predictions: DataFrame,
    model: ModelLike = None,
    evaluated_at: dt.datetime | None = None,
    threshold: SiteThreshold | None = None,
) -> pa.RecordBatch:
    """``gold.model_performance`` rows of a predictions DataFrame, computed on the driver (one
    small row per prediction) by `cxrlake.medallion.metrics.model_performance`."""
    columns = [c for c in rules.EVALUATION_COLUMNS if c != "content_sha256"]
    table = to_arrow(predictions.select(*columns))
    decision = threshold.threshold if threshold else model_for(model_path_of(model)).threshold
    return metrics.model_performance(table, threshold=decision, evaluated_at=_now(evaluated_at))
