"""Batch transforms: pyarrow batches in, rows of the medallion tables out (Arrow column ops).

Both engines call these on the rows their rules selected: the local engine on batches streamed
from Delta, the Spark engine inside ``mapInArrow``. No I/O here except what the Rust core does;
bytes and timestamps come in as arguments, so the same input gives the same rows on a laptop and
on a cluster.

- `bronze_batch`: ``binaryFile``-shaped rows -> ``bronze.kaggle_xray_metadata`` rows.
- `analyze_batch`: bronze rows -> silver metadata, silver features, gold predictions and
  quarantine rows, from one decode and one forward pass per image (`analysis.analyze`).
- `listing_quarantine_batch`: listing rejections -> quarantine rows.

The quarantine rule: a row is quarantined with the core's error string as reason when the core
cannot decode it; a DICOM file with the reason `dicom_silver_metadata` gives when its metadata
cannot be read or its BurnedInAnnotation is ``YES``; with ``no image dimensions returned`` when
it has no size, and with ``image WxH smaller than 64 px minimum side`` when a side is below
`schemas.QUARANTINE_MIN_SIDE_PX`; every other row is good (first reason wins, in this order).

DICOM metadata: bronze keeps each DICOM file's header as the DICOM JSON model
(``dicom_metadata``, from the core's `cxrlake.dicom_metadata`); silver keeps only its
de-identified form (``dicom_metadata_deid``, `cxrlake.deid`), made with the key of
`cxrlake.deid.load_key` (environment variable ``CXRLAKE_DEID_KEY``) unless the caller passes
one (the Spark jobs pass the Databricks secret). Batches without DICOM rows need no key.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cxrlake import deid
from cxrlake._api import dicom_metadata
from cxrlake.exceptions import InvalidArgumentError
from cxrlake.medallion import identity, schemas
from cxrlake.medallion.analysis import ANALYSIS_SCHEMA, analyze
from cxrlake.medallion.redact import redact_reasons
from cxrlake.model import Model
from cxrlake.threshold import SiteThreshold

STATS_FEATURE_TAG = "cxrlake-image-stats:1"
"""``feature_extraction_model`` of feature vectors built from image statistics (model without an
embedding output): ``[mean / 255, std / 255, quality_score]``."""


def _table(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    return pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch


def _batch(table: pa.Table, schema: pa.Schema) -> pa.RecordBatch:
    table = table.select(schema.names).cast(schema)
    combined = table.combine_chunks().to_batches()
    return combined[0] if combined else pa.RecordBatch.from_pylist([], schema=schema)


def _const(value: object, n: int, type_: pa.DataType) -> pa.Array:
    return pa.array([value] * n, type_) if value is not None else pa.nulls(n, type_)


ModelArg = Model | str | os.PathLike[str] | None
"""A ``model=`` argument: a `cxrlake.Model`, a path, or None (the shipped model)."""


def load_model(model: ModelArg) -> Model:
    """``model`` as a `cxrlake.Model` (a path or None loads it; None = the shipped model)."""
    return model if isinstance(model, Model) else Model(model)


def feature_tag(model: Model) -> str:
    """``feature_extraction_model`` of the vectors ``model`` gives: ``<name>:<version>`` for its
    embedding, `STATS_FEATURE_TAG` when it has none."""
    return f"{model.name}:{model.version}" if model.has_embedding else STATS_FEATURE_TAG


def bronze_batch(
    batch: pa.RecordBatch | pa.Table,
    ingestion_batch_id: str,
    ingested_at: dt.datetime | None = None,
    roots: Sequence[str] = (),
) -> pa.RecordBatch:
    """Turn a ``binaryFile``-shaped batch into ``bronze.kaggle_xray_metadata`` rows.

    ``batch`` columns: ``path`` string, ``modificationTime`` timestamp, ``length`` int64,
    ``content`` binary (Spark's ``binaryFile`` source has exactly these). Returns one row per input
    row in `schemas.BRONZE_METADATA` (image identity from the path, sha256 of ``content``).
    ``ingested_at`` defaults to now (UTC). ``roots``: the sources whose files follow identity
    rule 2 (`identity.identity_roots`).
    """
    ingested_at = identity.to_utc(ingested_at) or identity.utc_now()
    table = _table(batch)
    n = table.num_rows
    ids = identity.identify_paths(table.column("path"), tuple(roots))
    contents = table.column("content")
    shas = identity.sha256_column(contents)
    mtime = table.column("modificationTime")
    if mtime.type.tz is None:
        mtime = pc.assume_timezone(mtime, "UTC")
    out = pa.table(
        {
            "image_id": ids.column("image_id"),
            "filename": ids.column("filename"),
            "category": ids.column("category"),
            "dataset_split": ids.column("dataset_split"),
            "file_path": table.column("path"),
            "file_size_bytes": table.column("length"),
            "ingested_at": _const(ingested_at, n, schemas.TS),
            "ingestion_batch_id": _const(ingestion_batch_id, n, pa.string()),
            "content_sha256": shas,
            "source_modified_at": mtime.cast(schemas.TS),
            "content": contents,
            "dicom_metadata": dicom_metadata_column(contents)[0],
        }
    )
    return _batch(out, schemas.BRONZE_METADATA)


def is_dicom_content(contents: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Whether each value is a DICOM Part 10 file (``DICM`` at byte 128), as the core decides;
    NULL content is not. Arrow compute over four bytes per row."""
    head = pc.binary_slice(contents, 128, 132)
    flags = pc.fill_null(pc.equal(head, pa.scalar(b"DICM", head.type)), False)
    return flags.combine_chunks() if isinstance(flags, pa.ChunkedArray) else flags


def dicom_metadata_column(
    contents: pa.Array | pa.ChunkedArray, threads: int | None = None
) -> tuple[pa.Array, pa.Array]:
    """``(metadata, error)`` of `cxrlake.dicom_metadata` for every row: DICOM JSON text for
    DICOM files, NULL and NULL for anything else (the core looks at four bytes of those)."""
    n = len(contents)
    if n == 0:
        return pa.array([], pa.string()), pa.array([], pa.string())
    out = dicom_metadata(contents, threads=threads)
    return out.column("metadata"), out.column("error")


def _scatter(mask: pa.Array, values: pa.Array, n: int) -> pa.Array:
    """A string column of ``n`` rows: ``values`` in order where ``mask`` is true, NULL elsewhere."""
    return pc.replace_with_mask(pa.nulls(n, pa.string()), mask, values.cast(pa.string()))


def dicom_silver_metadata(
    bronze: pa.RecordBatch | pa.Table,
    deid_key: bytes | None = None,
    threads: int | None = None,
) -> tuple[pa.Array, pa.Array]:
    """The silver rule for DICOM rows: ``(dicom_metadata_deid, reason)`` per bronze row.

    ``bronze`` columns: ``content`` and, when present, ``dicom_metadata`` (a DICOM row whose
    bronze metadata is NULL, e.g. ingested by an earlier version, is described again by the
    core). For each DICOM row: its metadata de-identified by `cxrlake.deid.deidentify` as DICOM
    JSON text, and the quarantine reason: the core's error when the metadata cannot be read, the
    reason `deidentify` gives for ``BurnedInAnnotation = YES``, NULL otherwise. Other rows: NULL
    and NULL. The key is ``deid_key``, else `cxrlake.deid.load_key` (``CXRLAKE_DEID_KEY``), looked
    up only when the batch holds a DICOM row; without one that raises `InvalidArgumentError`
    naming the variable. Python runs per DICOM row only.
    """
    t = _table(bronze)
    n = t.num_rows
    nothing = pa.nulls(n, pa.string())
    if n == 0:
        return nothing, nothing
    content = t.column("content")
    dicom = is_dicom_content(content)
    if not pc.any(dicom).as_py():
        return nothing, nothing
    if "dicom_metadata" in t.column_names:
        metadata = t.column("dicom_metadata").combine_chunks().cast(pa.string())
    else:
        metadata = nothing
    errors = nothing
    undescribed = pc.and_(dicom, pc.is_null(metadata))
    if pc.any(undescribed).as_py():
        fresh, fresh_errors = dicom_metadata_column(content.filter(undescribed), threads)
        metadata = pc.coalesce(metadata, _scatter(undescribed, fresh, n))
        errors = _scatter(undescribed, fresh_errors, n)
    described = pc.and_(dicom, pc.is_valid(metadata))
    texts = metadata.filter(described).to_pylist()
    if not texts:
        return nothing, errors
    if deid_key is None:
        try:
            deid_key = deid.load_key()
        except InvalidArgumentError as e:
            raise InvalidArgumentError(
                f"{len(texts)} DICOM image(s) to de-identify before silver: {e}"
            ) from None
    cleaned: list[str] = []
    burned_in: list[str | None] = []
    for text in texts:
        result = deid.deidentify(json.loads(text), deid_key)
        cleaned.append(json.dumps(result.metadata, ensure_ascii=False, separators=(",", ":")))
        burned_in.append(result.quarantine_reason)
    deidentified = _scatter(described, pa.array(cleaned, pa.string()), n)
    reasons = pc.coalesce(errors, _scatter(described, pa.array(burned_in, pa.string()), n))
    return deidentified, reasons


def quarantine_reasons(analysis: pa.RecordBatch | pa.Table) -> pa.ChunkedArray:
    """The quarantine rule over `analysis.analyze` output: the reason per row, NULL when good."""
    t = _table(analysis)
    width, height = t.column("width"), t.column("height")
    side = schemas.QUARANTINE_MIN_SIDE_PX
    too_small = pc.binary_join_element_wise(
        "image ",
        pc.cast(width, pa.string()),
        "x",
        pc.cast(height, pa.string()),
        f" smaller than {side} px minimum side",
        "",
    )
    no_size = pc.or_(pc.is_null(width), pc.is_null(height))
    small = pc.fill_null(pc.less(pc.min_element_wise(width, height), side), False)
    reason = pc.if_else(
        no_size,
        pa.scalar("no image dimensions returned"),
        pc.if_else(small, too_small, pa.scalar(None, pa.string())),
    )
    # Reasons go to silver.quarantine and the report: no DICOM header value may ride along.
    return redact_reasons(pc.coalesce(t.column("error"), reason))


def quarantine_reason(error: str | None, width: int | None, height: int | None) -> str | None:
    """The quarantine rule for one image (see module docstring); None when the image is good."""
    batch = pa.table(
        {
            "width": pa.array([width], pa.int32()),
            "height": pa.array([height], pa.int32()),
            "error": pa.array([error], pa.string()),
        }
    )
    return quarantine_reasons(batch)[0].as_py()


class AnalyzedBatches(NamedTuple):
    """Output of `analyze_batch`: rows for four tables. Every input row is either good (one row in
    ``metadata``, ``features`` and ``predictions``) or bad (one row in ``quarantine``)."""

    metadata: pa.RecordBatch  # schemas.SILVER_METADATA
    features: pa.RecordBatch  # schemas.SILVER_FEATURES
    predictions: pa.RecordBatch  # schemas.GOLD_PREDICTIONS
    quarantine: pa.RecordBatch  # schemas.SILVER_QUARANTINE


BRONZE_ANALYZE_COLUMNS = (
    "image_id",
    "filename",
    "category",
    "dataset_split",
    "file_path",
    "file_size_bytes",
    "ingestion_batch_id",
    "content_sha256",
    "content",
    "dicom_metadata",
)
"""Bronze columns `analyze_batch` needs (``dicom_metadata`` may be absent: NULL)."""


def _labels(category: pa.ChunkedArray | pa.Array) -> pa.Array:
    return pc.cast(pc.index_in(category, pa.array(schemas.LABEL_NAMES)), pa.int32())


def _stats_vectors(t: pa.Table) -> pa.Array:
    stacked = np.column_stack(
        [
            t.column("mean_pixel_value").to_numpy(zero_copy_only=False) / 255.0,
            t.column("std_pixel_value").to_numpy(zero_copy_only=False) / 255.0,
            t.column("quality_score").to_numpy(zero_copy_only=False),
        ]
    ).ravel()
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(stacked, pa.float64()), 3)
    return fixed.cast(pa.list_(pa.float64()))


def analyze_batch(
    bronze: pa.RecordBatch | pa.Table,
    model: ModelArg = None,
    processed_at: dt.datetime | None = None,
    threads: int | None = None,
    threshold: SiteThreshold | None = None,
    deid_key: bytes | None = None,
    deidentify: bool = True,
) -> AnalyzedBatches:
    """Decode, validate and score bronze rows in one pass; split them into table rows.

    ``bronze``: rows with `BRONZE_ANALYZE_COLUMNS` (``content`` holds the image bytes).
    ``model``: a `cxrlake.Model`, a path or None (shipped model): its embedding is the feature
    vector (image statistics when it has none) and its probability the prediction, from the same
    forward pass. ``processed_at`` (default now) stamps every row. ``threshold``: a site's
    `cxrlake.threshold.SiteThreshold` deciding ``predicted_label`` instead of the model's own
    threshold; each prediction records the deciding one (``decision_threshold``,
    ``threshold_source``). DICOM rows get their de-identified metadata and quarantine reason from
    `dicom_silver_metadata` (key ``deid_key``, else ``CXRLAKE_DEID_KEY``); ``deidentify=False``
    skips that for rows that already passed silver (`gold_predictions_batch`).
    """
    processed_at = identity.to_utc(processed_at) or identity.utc_now()
    loaded = load_model(model)
    decision = _decision(loaded, threshold)
    src = _table(bronze)
    if "dicom_metadata" not in src.column_names:
        src = src.append_column("dicom_metadata", pa.nulls(src.num_rows, pa.string()))
    src = src.select(list(BRONZE_ANALYZE_COLUMNS))
    if src.num_rows:
        result = pa.Table.from_batches([analyze(src.column("content"), loaded, threads)])
    else:
        result = ANALYSIS_SCHEMA.empty_table()
    if deidentify:
        deidentified, dicom_reasons = dicom_silver_metadata(src, deid_key, threads)
    else:
        deidentified = dicom_reasons = pa.nulls(src.num_rows, pa.string())
    reasons = redact_reasons(
        pc.coalesce(result.column("error"), dicom_reasons, quarantine_reasons(result))
    )
    good = pc.is_null(reasons)
    # bronze's metadata (protected health information) goes no further than this line
    joined = src.drop_columns(["content", "dicom_metadata"])
    joined = joined.append_column("dicom_metadata_deid", deidentified)
    for name in result.column_names:
        joined = joined.append_column("a_" + name, result.column(name))
    joined = joined.append_column("reason", reasons)
    ok, ko = joined.filter(good), joined.filter(pc.invert(good))
    ts = _const(processed_at, ok.num_rows, schemas.TS)
    label = _labels(ok.column("category"))
    return AnalyzedBatches(
        _batch(_silver_metadata(ok, label, ts), schemas.SILVER_METADATA),
        _batch(_silver_features(ok, loaded, ts), schemas.SILVER_FEATURES),
        _batch(_gold_predictions(ok, label, processed_at, decision), schemas.GOLD_PREDICTIONS),
        _batch(_quarantine_rows(ko, processed_at), schemas.SILVER_QUARANTINE),
    )


def _decision(model: Model, threshold: SiteThreshold | None) -> tuple[float, str] | SiteThreshold:
    """The model's own (threshold, ``model``), or a site's threshold checked to be this model's."""
    if threshold is None:
        return model.threshold, "model"
    if not isinstance(threshold, SiteThreshold) or (
        threshold.model_name,
        threshold.model_version,
    ) != (model.name, model.version):
        raise ValueError(
            f"threshold must be a SiteThreshold of model {model.name} {model.version}, "
            f"got {threshold!r}"
        )
    return threshold


def _silver_metadata(ok: pa.Table, label: pa.Array, ts: pa.Array) -> pa.Table:
    """``silver.xray_metadata`` rows of the good images of an analysed batch."""
    return pa.table(
        {
            "image_id": ok.column("image_id"),
            "label": label,
            "label_name": ok.column("category"),
            "dataset_split": ok.column("dataset_split"),
            "file_path": ok.column("file_path"),
            "image_width": ok.column("a_width"),
            "image_height": ok.column("a_height"),
            "quality_score": ok.column("a_quality_score"),
            "processed_at": ts,
            "source_batch_id": ok.column("ingestion_batch_id"),
            "filename": ok.column("filename"),
            "content_sha256": ok.column("content_sha256"),
            "file_size_bytes": ok.column("file_size_bytes"),
            "dicom_metadata_deid": ok.column("dicom_metadata_deid"),
        }
    )


def _silver_features(ok: pa.Table, model: Model, ts: pa.Array) -> pa.Table:
    """``silver.image_features`` rows: the model's embedding, else image statistics."""
    renamed = ok.rename_columns([c.removeprefix("a_") for c in ok.column_names])
    vectors = ok.column("a_embedding") if model.has_embedding else _stats_vectors(renamed)
    return pa.table(
        {
            "image_id": ok.column("image_id"),
            "feature_vector": vectors,
            "feature_extraction_model": _const(feature_tag(model), ok.num_rows, pa.string()),
            "mean_pixel_value": ok.column("a_mean_pixel_value"),
            "std_pixel_value": ok.column("a_std_pixel_value"),
            "extracted_at": ts,
            "content_sha256": ok.column("content_sha256"),
        }
    )


def _gold_predictions(
    ok: pa.Table,
    label: pa.Array,
    predicted_at: dt.datetime,
    decision: tuple[float, str] | SiteThreshold,
) -> pa.Table:
    """``gold.pneumonia_predictions`` rows, labelled at ``decision`` (the model's own threshold,
    as the core decided, or a site's)."""
    n = ok.num_rows
    ts = _const(predicted_at, n, schemas.TS)
    prob = ok.column("a_probability")
    pred_label = ok.column("a_predicted_label")
    if isinstance(decision, SiteThreshold):
        value, source = decision.threshold, decision.source
        pred_label = pc.cast(pc.greater_equal(prob, value), pa.int32())
    else:
        value, source = decision
    pids = [
        identity.prediction_id(i, name, version, sha)
        for i, name, version, sha in zip(
            ok.column("image_id").to_pylist(),
            ok.column("a_model_name").to_pylist(),
            ok.column("a_model_version").to_pylist(),
            ok.column("content_sha256").to_pylist(),
            strict=True,
        )
    ]
    return pa.table(
        {
            "prediction_id": pa.array(pids, pa.string()),
            "image_id": ok.column("image_id"),
            "predicted_label": pred_label,
            "prediction_probability": prob,
            "confidence_score": pc.max_element_wise(prob, pc.subtract(1.0, prob)),
            "true_label": label,
            "is_correct": pc.equal(pred_label, label),
            "model_name": ok.column("a_model_name"),
            "model_version": ok.column("a_model_version"),
            "predicted_at": ts,
            "prediction_date": _const(predicted_at.date(), n, pa.date32()),
            "dataset_split": ok.column("dataset_split"),
            "content_sha256": ok.column("content_sha256"),
            "heatmap": ok.column("a_heatmap").cast(schemas.HEATMAP),
            "decision_threshold": _const(float(value), n, pa.float64()),
            "threshold_source": _const(source, n, pa.string()),
            "ood_score": ok.column("a_ood_score"),
            "out_of_distribution": ok.column("a_out_of_distribution"),
            "ood_reason": ok.column("a_ood_reason"),
        }
    )


def _quarantine_rows(ko: pa.Table, quarantined_at: dt.datetime) -> pa.Table:
    """``silver.quarantine`` rows (stage ``silver``) of the images the quarantine rule holds."""
    n = ko.num_rows
    return pa.table(
        {
            "image_id": ko.column("image_id"),
            "filename": ko.column("filename"),
            "file_path": ko.column("file_path"),
            "dataset_split": ko.column("dataset_split"),
            "category": ko.column("category"),
            "file_size_bytes": ko.column("file_size_bytes"),
            "content_sha256": ko.column("content_sha256"),
            "stage": _const("silver", n, pa.string()),
            "reason": ko.column("reason"),
            "source_batch_id": ko.column("ingestion_batch_id"),
            "quarantined_at": _const(quarantined_at, n, schemas.TS),
        }
    )


class SilverBatches(NamedTuple):
    """The silver part of `analyze_batch`: rows for the three silver tables."""

    metadata: pa.RecordBatch  # schemas.SILVER_METADATA
    features: pa.RecordBatch  # schemas.SILVER_FEATURES
    quarantine: pa.RecordBatch  # schemas.SILVER_QUARANTINE


def silver_batch(
    bronze: pa.RecordBatch | pa.Table,
    model: ModelArg = None,
    processed_at: dt.datetime | None = None,
    threads: int | None = None,
) -> SilverBatches:
    """The silver rows of `analyze_batch` (metadata, features, quarantine)."""
    out = analyze_batch(bronze, model=model, processed_at=processed_at, threads=threads)
    return SilverBatches(out.metadata, out.features, out.quarantine)


def listing_quarantine_batch(
    paths: Sequence[str] | pa.Array,
    reasons: Sequence[str] | pa.Array,
    ingestion_batch_id: str,
    quarantined_at: dt.datetime | None = None,
    image_ids: Sequence[str] | pa.Array | None = None,
) -> pa.RecordBatch:
    """Quarantine rows (stage ``listing``) for entries that are not ingested: not a regular file,
    unreadable, or an identity collision. ``image_ids`` overrides the id derived from the path."""
    quarantined_at = identity.to_utc(quarantined_at) or identity.utc_now()
    paths = pa.array(paths, pa.string())
    n = len(paths)
    ids = identity.identify_paths(paths)
    table = pa.table(
        {
            "image_id": ids.column("image_id")
            if image_ids is None
            else pa.array(image_ids, pa.string()),
            "filename": ids.column("filename"),
            "file_path": paths,
            "dataset_split": ids.column("dataset_split"),
            "category": ids.column("category"),
            "file_size_bytes": pa.nulls(n, pa.int64()),
            "content_sha256": pa.nulls(n, pa.string()),
            "stage": _const("listing", n, pa.string()),
            "reason": pa.array(reasons, pa.string()),
            "source_batch_id": _const(ingestion_batch_id, n, pa.string()),
            "quarantined_at": _const(quarantined_at, n, schemas.TS),
        }
    )
    return _batch(table, schemas.SILVER_QUARANTINE)


GOLD_INPUT_COLUMNS = ("image_id", "label", "dataset_split", "content_sha256", "content")
"""Columns `gold_predictions_batch` needs."""


def gold_predictions_batch(
    batch: pa.RecordBatch | pa.Table,
    model: ModelArg = None,
    predicted_at: dt.datetime | None = None,
    threads: int | None = None,
    threshold: SiteThreshold | None = None,
) -> pa.RecordBatch:
    """Score images and return ``gold.pneumonia_predictions`` rows (same pass as
    `analyze_batch`, same ``threshold``). ``batch`` columns: `GOLD_INPUT_COLUMNS`; rows the core
    cannot score are dropped (the quarantine rule holds them)."""
    t = _table(batch)
    labels = t.column("label")
    names = pa.array(schemas.LABEL_NAMES)
    category = pc.take(names, pc.cast(labels, pa.int64()))
    n = t.num_rows
    bronze = pa.table(
        {
            "image_id": t.column("image_id"),
            "filename": pa.nulls(n, pa.string()),
            "category": category,
            "dataset_split": t.column("dataset_split"),
            "file_path": pa.nulls(n, pa.string()),
            "file_size_bytes": pa.nulls(n, pa.int64()),
            "ingestion_batch_id": pa.nulls(n, pa.string()),
            "content_sha256": t.column("content_sha256"),
            "content": t.column("content"),
        }
    )
    # the rows passed silver (DICOM metadata de-identified there): no key needed to score them
    return analyze_batch(
        bronze,
        model=model,
        processed_at=predicted_at,
        threads=threads,
        threshold=threshold,
        deidentify=False,
    ).predictions
