"""Pure batch transforms: pyarrow RecordBatch in, RecordBatch out, in the exact table schemas.

Shared by the local pipeline and the Spark layer (`mapInArrow`). No I/O here except what the Rust
core does when given paths; bytes and timestamps come in as arguments, so the same input gives the
same output on a laptop and on a cluster.

Identity rules (documented in docs/lakehouse.md):

- ``category``: the name of the file's parent folder when it is ``NORMAL`` or ``PNEUMONIA``
  (case-insensitive, stored upper-case), else NULL (unlabelled).
- ``dataset_split``: the folder that holds the label folder (``chest_xray/train/NORMAL/x.jpeg``
  -> ``train``, ``chest_xray_fullres/NORMAL/x.jpeg`` -> ``chest_xray_fullres``); for an unlabelled
  file, its parent folder. Lower-cased, characters other than ``[a-z0-9_]`` replaced by ``_``.
- ``image_id``: first 32 hex digits of sha256 of ``"<dataset_split>/<category or ->/<filename>"``.
  It depends only on the last path components, not on where the folder is mounted, so the same
  files give the same ids locally and on a UC Volume; a changed file keeps its image_id and gets a
  new ``content_sha256``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cxrlake.lakehouse import schemas

_SPLIT_CHARS = re.compile(r"[^a-z0-9_]+")


def utc_now() -> dt.datetime:
    """The current time, timezone-aware UTC, truncated to microseconds."""
    return dt.datetime.now(dt.timezone.utc)


def _path_parts(path: str) -> list[str]:
    """Components of a local path or URI (``file:/``, ``dbfs:/``), split on ``/`` or ``\\``."""
    if ":" in path.split("/", 1)[0]:
        path = path.split(":", 1)[1]
    return [p for p in re.split(r"[/\\]+", path) if p and p != "."]


def _normalise_split(name: str) -> str:
    return _SPLIT_CHARS.sub("_", name.lower()).strip("_") or "unknown"


class ImageIdentity(NamedTuple):
    """What a file's path says about it (see module docstring)."""

    image_id: str
    filename: str
    category: str | None
    dataset_split: str


def image_id_for(dataset_split: str, category: str | None, filename: str) -> str:
    """Deterministic image id: 32 hex digits of sha256("<split>/<category or ->/<filename>")."""
    key = f"{dataset_split}/{category or '-'}/{filename}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def identify(path: str) -> ImageIdentity:
    """Derive image_id, filename, category and dataset_split from a file path or URI."""
    parts = _path_parts(path)
    if not parts:
        raise ValueError(f"cannot derive an image id from empty path {path!r}")
    filename = parts[-1]
    parent = parts[-2] if len(parts) >= 2 else ""
    category = parent.upper() if parent.upper() in schemas.LABEL_NAMES else None
    if category is not None:
        split_dir = parts[-3] if len(parts) >= 3 else "unknown"
    else:
        split_dir = parent or "unknown"
    split = _normalise_split(split_dir)
    return ImageIdentity(image_id_for(split, category, filename), filename, category, split)


def label_of(category: str | None) -> int | None:
    """Integer label of a category name (0 = NORMAL, 1 = PNEUMONIA), None when unlabelled."""
    return schemas.LABEL_NAMES.index(category) if category in schemas.LABEL_NAMES else None


def sha256_hex(content: bytes) -> str:
    """Hex sha256 of some bytes (the bronze ``content_sha256``)."""
    return hashlib.sha256(content).hexdigest()


def prediction_id(image_id: str, model_name: str, model_version: str, content_sha256: str) -> str:
    """Deterministic prediction id: 32 hex digits of sha256 over its four inputs.

    Re-scoring the same bytes with the same model gives the same id, so re-runs never duplicate.
    """
    key = "\x1f".join((image_id, model_name, model_version, content_sha256 or ""))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def _column(batch: pa.RecordBatch | pa.Table, name: str) -> list[Any]:
    return batch.column(name).to_pylist()


def _to_utc(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    raise TypeError(f"expected a datetime, got {type(value).__name__}")


def bronze_batch(
    batch: pa.RecordBatch | pa.Table,
    ingestion_batch_id: str,
    ingested_at: dt.datetime | None = None,
) -> pa.RecordBatch:
    """Turn a ``binaryFile``-shaped batch into ``bronze.kaggle_xray_metadata`` rows.

    ``batch`` columns: ``path`` string, ``modificationTime`` timestamp, ``length`` int64,
    ``content`` binary (Spark's ``binaryFile`` source has exactly these). Returns one row per input
    row in `schemas.BRONZE_METADATA` (image identity from the path, sha256 of ``content``).
    ``ingested_at`` defaults to now (UTC).
    """
    ingested_at = _to_utc(ingested_at) or utc_now()
    paths = _column(batch, "path")
    contents = _column(batch, "content")
    ids = [identify(p) for p in paths]
    columns = {
        "image_id": [i.image_id for i in ids],
        "filename": [i.filename for i in ids],
        "category": [i.category for i in ids],
        "dataset_split": [i.dataset_split for i in ids],
        "file_path": paths,
        "file_size_bytes": _column(batch, "length"),
        "ingested_at": [ingested_at] * len(paths),
        "ingestion_batch_id": [ingestion_batch_id] * len(paths),
        "content_sha256": [None if c is None else sha256_hex(c) for c in contents],
        "source_modified_at": [_to_utc(t) for t in _column(batch, "modificationTime")],
        "content": contents,
    }
    return pa.RecordBatch.from_pydict(columns, schema=schemas.BRONZE_METADATA)


class SilverBatches(NamedTuple):
    """Output of `silver_batch`: rows for the three silver tables."""

    metadata: pa.RecordBatch  # schemas.SILVER_METADATA
    features: pa.RecordBatch  # schemas.SILVER_FEATURES
    quarantine: pa.RecordBatch  # schemas.SILVER_QUARANTINE


def quarantine_reason(error: str | None, width: int | None, height: int | None) -> str | None:
    """The quarantine rule: the Rust core's error string, or a validation failure, or None."""
    if error:
        return error
    if width is None or height is None:
        return "no image dimensions returned"
    if min(width, height) < schemas.QUARANTINE_MIN_SIDE_PX:
        return (
            f"image {width}x{height} smaller than {schemas.QUARANTINE_MIN_SIDE_PX} px minimum side"
        )
    return None


def _model_tag(model: Any) -> str:
    return f"{model.name}:{model.version}"


def silver_batch(
    bronze: pa.RecordBatch | pa.Table,
    model: Any = None,
    processed_at: dt.datetime | None = None,
    threads: int | None = None,
) -> SilverBatches:
    """Decode and validate bronze rows; split them into silver rows and quarantine rows.

    ``bronze``: rows in `schemas.BRONZE_METADATA` (``content`` holds the image bytes). ``model``: a
    `cxrlake.Model`, a path or None (default model; its embedding is the feature vector).
    Every input row ends in exactly one of ``metadata`` (with a ``features`` row) or ``quarantine``.
    """
    import cxrlake

    processed_at = _to_utc(processed_at) or utc_now()
    model = model if isinstance(model, cxrlake.Model) else cxrlake.Model(model)
    n = bronze.num_rows
    if n == 0:
        return SilverBatches(
            pa.RecordBatch.from_pylist([], schema=schemas.SILVER_METADATA),
            pa.RecordBatch.from_pylist([], schema=schemas.SILVER_FEATURES),
            pa.RecordBatch.from_pylist([], schema=schemas.SILVER_QUARANTINE),
        )
    feats = cxrlake.features(
        bronze.column("content"), model=model, threads=threads, embedding=model.has_embedding
    )
    rows = bronze.select(
        [
            "image_id",
            "filename",
            "category",
            "dataset_split",
            "file_path",
            "file_size_bytes",
            "ingestion_batch_id",
            "content_sha256",
        ]
    ).to_pylist()
    widths = _column(feats, "width")
    heights = _column(feats, "height")
    errors = _column(feats, "error")
    quality = _column(feats, "quality_score")
    means = _column(feats, "mean_pixel_value")
    stds = _column(feats, "std_pixel_value")
    embeddings = _column(feats, "embedding")
    tag = _model_tag(model)
    meta, feat, quar = [], [], []
    for i, row in enumerate(rows):
        reason = quarantine_reason(errors[i], widths[i], heights[i])
        if reason is not None:
            quar.append(
                {
                    "image_id": row["image_id"],
                    "filename": row["filename"],
                    "file_path": row["file_path"],
                    "dataset_split": row["dataset_split"],
                    "category": row["category"],
                    "file_size_bytes": row["file_size_bytes"],
                    "content_sha256": row["content_sha256"],
                    "stage": "silver",
                    "reason": reason,
                    "source_batch_id": row["ingestion_batch_id"],
                    "quarantined_at": processed_at,
                }
            )
            continue
        meta.append(
            {
                "image_id": row["image_id"],
                "label": label_of(row["category"]),
                "label_name": row["category"],
                "dataset_split": row["dataset_split"],
                "file_path": row["file_path"],
                "image_width": widths[i],
                "image_height": heights[i],
                "quality_score": quality[i],
                "processed_at": processed_at,
                "source_batch_id": row["ingestion_batch_id"],
                "filename": row["filename"],
                "content_sha256": row["content_sha256"],
                "file_size_bytes": row["file_size_bytes"],
            }
        )
        feat.append(
            {
                "image_id": row["image_id"],
                "feature_vector": embeddings[i]
                if embeddings[i] is not None
                else [means[i] / 255.0, stds[i] / 255.0, quality[i]],
                "feature_extraction_model": tag
                if embeddings[i] is not None
                else "cxrlake-image-stats:1",
                "mean_pixel_value": means[i],
                "std_pixel_value": stds[i],
                "extracted_at": processed_at,
                "content_sha256": row["content_sha256"],
            }
        )
    return SilverBatches(
        pa.RecordBatch.from_pylist(meta, schema=schemas.SILVER_METADATA),
        pa.RecordBatch.from_pylist(feat, schema=schemas.SILVER_FEATURES),
        pa.RecordBatch.from_pylist(quar, schema=schemas.SILVER_QUARANTINE),
    )


def listing_quarantine_batch(
    paths: Sequence[str],
    reasons: Sequence[str],
    ingestion_batch_id: str,
    quarantined_at: dt.datetime | None = None,
) -> pa.RecordBatch:
    """Quarantine rows (stage ``listing``) for entries that are not regular files or unreadable."""
    quarantined_at = _to_utc(quarantined_at) or utc_now()
    rows = []
    for path, reason in zip(paths, reasons, strict=True):
        ident = identify(path)
        rows.append(
            {
                "image_id": ident.image_id,
                "filename": ident.filename,
                "file_path": path,
                "dataset_split": ident.dataset_split,
                "category": ident.category,
                "file_size_bytes": None,
                "content_sha256": None,
                "stage": "listing",
                "reason": reason,
                "source_batch_id": ingestion_batch_id,
                "quarantined_at": quarantined_at,
            }
        )
    return pa.RecordBatch.from_pylist(rows, schema=schemas.SILVER_QUARANTINE)


def gold_predictions_batch(
    batch: pa.RecordBatch | pa.Table,
    model: Any = None,
    predicted_at: dt.datetime | None = None,
    threads: int | None = None,
) -> pa.RecordBatch:
    """Score images and return ``gold.pneumonia_predictions`` rows.

    ``batch`` columns: ``image_id``, ``label`` (int, NULL when unlabelled), ``dataset_split``,
    ``content_sha256`` and ``content`` (image bytes) or, when ``content`` is absent, ``file_path``.
    Rows the model cannot score (decode errors) are dropped: silver already quarantined them.
    """
    import cxrlake

    predicted_at = _to_utc(predicted_at) or utc_now()
    model = model if isinstance(model, cxrlake.Model) else cxrlake.Model(model)
    if batch.num_rows == 0:
        return pa.RecordBatch.from_pylist([], schema=schemas.GOLD_PREDICTIONS)
    images = batch.column("content" if "content" in batch.schema.names else "file_path")
    pred = cxrlake.predict(images, model=model, threads=threads)
    probs = _column(pred, "probability")
    labels = _column(pred, "predicted_label")
    names = _column(pred, "model_name")
    versions = _column(pred, "model_version")
    rows = []
    for i, (image_id, true_label, split, sha) in enumerate(
        zip(
            _column(batch, "image_id"),
            _column(batch, "label"),
            _column(batch, "dataset_split"),
            _column(batch, "content_sha256"),
            strict=True,
        )
    ):
        p = probs[i]
        if p is None:
            continue
        rows.append(
            {
                "prediction_id": prediction_id(image_id, names[i], versions[i], sha),
                "image_id": image_id,
                "predicted_label": labels[i],
                "prediction_probability": p,
                "confidence_score": max(p, 1.0 - p),
                "true_label": true_label,
                "is_correct": None if true_label is None else bool(labels[i] == true_label),
                "model_name": names[i],
                "model_version": versions[i],
                "predicted_at": predicted_at,
                "prediction_date": predicted_at.date(),
                "dataset_split": split,
                "content_sha256": sha,
            }
        )
    return pa.RecordBatch.from_pylist(rows, schema=schemas.GOLD_PREDICTIONS)


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve by the rank (Mann-Whitney U) formula, ties averaged.

    None when ``y_true`` holds a single class.
    """
    y_true = np.asarray(y_true, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    n_pos = int(y_true.sum())
    n_neg = int(y_true.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(score.size, dtype=np.float64)
    sorted_scores = score[order]
    # average ranks over ties (1-based)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def predictions_fingerprint(prediction_ids: Sequence[str]) -> str:
    """sha256 over the sorted prediction ids of one split: changes iff the prediction set does."""
    h = hashlib.sha256()
    for pid in sorted(prediction_ids):
        h.update(pid.encode("ascii"))
        h.update(b"\n")
    return h.hexdigest()


def evaluation_id(model_name: str, model_version: str, split: str, fingerprint: str) -> str:
    """Deterministic evaluation id of one (model, split, prediction set)."""
    key = "\x1f".join((model_name, model_version, split, fingerprint))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def model_performance(
    predictions: pa.RecordBatch | pa.Table,
    threshold: float | None = None,
    evaluated_at: dt.datetime | None = None,
) -> pa.RecordBatch:
    """Metrics per (model_name, model_version, dataset_split) over labelled predictions.

    ``predictions``: rows with at least ``prediction_id``, ``model_name``, ``model_version``,
    ``dataset_split``, ``true_label``, ``predicted_label``, ``prediction_probability``; unlabelled
    rows (NULL ``true_label``) are ignored, and a split with no labelled row gives no row.
    ``confusion_matrix`` is JSON ``{"labels": ["NORMAL", "PNEUMONIA"], "matrix": [[tn, fp],
    [fn, tp]], "tn": .., "fp": .., "fn": .., "tp": ..}`` (rows = true label, columns = predicted).
    Precision, recall and F1 are for the positive class PNEUMONIA (0 when undefined).
    ``threshold`` is recorded as given (the model's decision threshold).
    """
    evaluated_at = _to_utc(evaluated_at) or utc_now()
    table = pa.table(predictions) if isinstance(predictions, pa.RecordBatch) else predictions
    table = table.filter(pc.is_valid(table.column("true_label")))
    rows = []
    if table.num_rows:
        groups = table.group_by(["model_name", "model_version", "dataset_split"]).aggregate([])
        for key in groups.to_pylist():
            mask = pc.and_(
                pc.and_(
                    pc.equal(table.column("model_name"), key["model_name"]),
                    pc.equal(table.column("model_version"), key["model_version"]),
                ),
                pc.equal(table.column("dataset_split"), key["dataset_split"]),
            )
            part = table.filter(mask)
            y = np.asarray(part.column("true_label").to_numpy(zero_copy_only=False)) == 1
            yhat = np.asarray(part.column("predicted_label").to_numpy(zero_copy_only=False)) == 1
            prob = part.column("prediction_probability").to_numpy(zero_copy_only=False)
            tp = int(np.sum(y & yhat))
            tn = int(np.sum(~y & ~yhat))
            fp = int(np.sum(~y & yhat))
            fn = int(np.sum(y & ~yhat))
            precision = _safe_div(tp, tp + fp)
            recall = _safe_div(tp, tp + fn)
            fingerprint = predictions_fingerprint(part.column("prediction_id").to_pylist())
            rows.append(
                {
                    "evaluation_id": evaluation_id(
                        key["model_name"], key["model_version"], key["dataset_split"], fingerprint
                    ),
                    "model_name": key["model_name"],
                    "model_version": key["model_version"],
                    "dataset_split": key["dataset_split"],
                    "accuracy": _safe_div(tp + tn, y.size),
                    "precision": precision,
                    "recall": recall,
                    "f1_score": _safe_div(2 * precision * recall, precision + recall),
                    "auc_roc": roc_auc(y, prob),
                    "confusion_matrix": json.dumps(
                        {
                            "labels": list(schemas.LABEL_NAMES),
                            "matrix": [[tn, fp], [fn, tp]],
                            "tn": tn,
                            "fp": fp,
                            "fn": fn,
                            "tp": tp,
                        }
                    ),
                    "total_samples": int(y.size),
                    "evaluated_at": evaluated_at,
                    "evaluation_date": evaluated_at.date(),
                    "threshold": threshold,
                    "predictions_fingerprint": fingerprint,
                }
            )
    rows.sort(key=lambda r: (r["model_name"], r["model_version"], r["dataset_split"]))
    return pa.RecordBatch.from_pylist(rows, schema=schemas.GOLD_PERFORMANCE)
