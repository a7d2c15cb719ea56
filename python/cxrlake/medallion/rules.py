"""The rules about which rows exist, as SQL that DuckDB (local engine) and Spark SQL both run.

Each engine registers the same views, runs these statements unchanged and applies the rows they
return to its tables (delta-rs locally, Delta ``MERGE``/``DELETE`` on Databricks). The SQL uses
only what both dialects share: CTEs, joins, ``row_number() OVER``, ``concat``, ``coalesce``,
``CASE``, ``CAST(... AS STRING)``.

Views an engine registers (`VIEWS`):

- ``listing``: the files of this run (`LISTING_SCHEMA`): ``file_path``, ``image_id``,
  ``file_size_bytes``, ``source_modified_at``, ``reject_reason`` (NULL for a regular file).
- ``bronze``: ``bronze.kaggle_xray_metadata`` without ``content``.
- ``silver``, ``features``, ``quarantine``, ``predictions``, ``performance``: the key columns of
  ``silver.xray_metadata``, ``silver.image_features``, ``silver.quarantine``,
  ``gold.pneumonia_predictions``, ``gold.model_performance``.
- ``model``: one row: ``model_name``, ``model_version``, ``feature_tag`` (`MODEL_SCHEMA`).
- ``incoming`` (bronze stage): the bronze rows just read, ``content`` included.
- ``evaluations`` (performance stage): `cxrlake.medallion.metrics.model_performance` rows.

The end states of an image (identity ``image_id``, current bytes = latest bronze version):

- good: one row in silver, features (extracted by the current model) and a prediction of the
  current model for those bytes; no quarantine row.
- bad: a ``silver``-stage quarantine row for those bytes; no silver, features or prediction row
  of any model (gold follows silver).
- held at listing: a ``listing``-stage quarantine row (not a regular file, unreadable, or an
  identity collision naming both files); no silver, features or prediction row.

`ANALYZE_TODO` selects every image not in its end state, so a run killed between any two
commits leaves images that the next run selects and finishes; writes are idempotent MERGEs on
the table keys, so finishing twice changes nothing.
"""

from __future__ import annotations

import pyarrow as pa

from cxrlake.medallion import schemas

LISTING_SCHEMA = pa.schema(
    [
        pa.field("file_path", pa.string()),
        pa.field("image_id", pa.string()),
        pa.field("file_size_bytes", pa.int64()),
        pa.field("source_modified_at", schemas.TS),
        pa.field("reject_reason", pa.string()),
    ]
)
"""Schema of the ``listing`` view."""

MODEL_SCHEMA = pa.schema(
    [
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("feature_tag", pa.string()),
    ]
)
"""Schema of the one-row ``model`` view."""

STATE_COLUMNS: dict[str, tuple[str, ...]] = {
    "bronze": (
        "image_id",
        "content_sha256",
        "file_path",
        "file_size_bytes",
        "source_modified_at",
        "ingested_at",
    ),
    "silver": ("image_id", "content_sha256"),
    "features": ("image_id", "content_sha256", "feature_extraction_model"),
    "quarantine": ("image_id", "content_sha256", "stage", "file_path", "reason"),
    "predictions": ("image_id", "content_sha256", "model_name", "model_version"),
    "performance": ("evaluation_id",),
}
"""Columns of each state view (what a rule reads of each table)."""

VIEWS: dict[str, schemas.TableSpec] = {
    "bronze": schemas.BRONZE,
    "silver": schemas.SILVER,
    "features": schemas.FEATURES,
    "quarantine": schemas.QUARANTINE,
    "predictions": schemas.PREDICTIONS,
    "performance": schemas.PERFORMANCE,
}
"""State view name -> the table it shows."""

_LISTING_HELD = """
collisions AS (
  SELECT
    image_id,
    min(file_path) AS file_path,
    concat(
      'identity collision: ', min(file_path), ' and ', max(file_path),
      CASE WHEN count(*) > 2
        THEN concat(' (and ', CAST(count(*) - 2 AS STRING), ' more)') ELSE '' END,
      ' map to the same image id; rename one of them'
    ) AS reason
  FROM listing
  GROUP BY image_id
  HAVING count(*) > 1
),
held AS (
  SELECT image_id, file_path, reason FROM collisions
  UNION ALL
  SELECT l.image_id, l.file_path, l.reject_reason AS reason
  FROM listing l
  WHERE l.reject_reason IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM collisions c WHERE c.image_id = l.image_id)
),
accepted AS (
  SELECT l.* FROM listing l
  WHERE l.reject_reason IS NULL
    AND NOT EXISTS (SELECT 1 FROM collisions c WHERE c.image_id = l.image_id)
)
"""

LISTING_HELD = f"WITH {_LISTING_HELD} SELECT image_id, file_path, reason FROM held"
"""Listing rows held out of bronze (``image_id``, ``file_path``, ``reason``): entries that are
not regular files or could not be read, and one row per identity collision, naming both files."""

LISTING_QUARANTINE_UPSERTS = f"""
WITH {_LISTING_HELD}
SELECT h.image_id, h.file_path, h.reason
FROM held h
WHERE NOT EXISTS (
  SELECT 1 FROM quarantine q
  WHERE q.image_id = h.image_id AND q.stage = 'listing'
    AND q.file_path = h.file_path AND q.reason = h.reason
)
"""
"""Held rows not yet in quarantine as they are: MERGE them (stage ``listing``) on image_id."""

LISTING_QUARANTINE_RELEASES = f"""
WITH {_LISTING_HELD}
SELECT DISTINCT q.image_id
FROM quarantine q
JOIN accepted a ON a.image_id = q.image_id
WHERE q.stage = 'listing'
"""
"""Image ids whose ``listing`` quarantine row no longer applies (the file is a regular,
readable, unambiguous file again): delete those quarantine rows."""


def listing_evictions(view: str) -> str:
    """Image ids held at listing that still have rows in ``view`` (silver, features or
    predictions): delete them there."""
    return f"""
WITH {_LISTING_HELD}
SELECT DISTINCT t.image_id FROM {view} t JOIN held h ON h.image_id = t.image_id
"""


BRONZE_TO_READ = f"""
WITH {_LISTING_HELD}
SELECT a.file_path, a.image_id, a.file_size_bytes, a.source_modified_at
FROM accepted a
WHERE NOT EXISTS (
  SELECT 1 FROM bronze b
  WHERE b.file_path = a.file_path
    AND b.file_size_bytes = a.file_size_bytes
    AND b.source_modified_at = a.source_modified_at
)
ORDER BY a.file_path
"""
"""Accepted files whose (path, size, modification time) bronze has not recorded: read them."""

BRONZE_INSERTS = """
SELECT i.* FROM incoming i
WHERE NOT EXISTS (
  SELECT 1 FROM bronze b
  WHERE b.image_id = i.image_id AND b.content_sha256 = i.content_sha256
)
"""
"""Rows read this run whose (image_id, content_sha256) is new: append them to bronze."""

BRONZE_STAT_UPDATES = """
SELECT i.image_id, i.content_sha256, i.file_path, i.file_size_bytes, i.source_modified_at
FROM incoming i
JOIN bronze b ON b.image_id = i.image_id AND b.content_sha256 = i.content_sha256
WHERE NOT (
  b.file_path = i.file_path
  AND b.file_size_bytes = i.file_size_bytes
  AND b.source_modified_at = i.source_modified_at
)
"""
"""Rows read this run whose bytes bronze already holds under another path, size or modification
time (e.g. after ``touch``): update those three columns, so the file is not read again."""

ANALYZE_TODO = """
WITH ranked AS (
  SELECT
    image_id,
    content_sha256,
    row_number() OVER (
      PARTITION BY image_id ORDER BY ingested_at DESC, file_path DESC, content_sha256 DESC
    ) AS version_rank
  FROM bronze
),
latest AS (SELECT image_id, content_sha256 FROM ranked WHERE version_rank = 1),
any_prediction AS (SELECT DISTINCT image_id FROM predictions),
current_prediction AS (
  SELECT DISTINCT p.image_id, p.content_sha256
  FROM predictions p
  JOIN model m ON p.model_name = m.model_name AND p.model_version = m.model_version
)
SELECT l.image_id, l.content_sha256
FROM latest l
CROSS JOIN model m
LEFT JOIN silver s ON s.image_id = l.image_id
LEFT JOIN features f ON f.image_id = l.image_id
LEFT JOIN quarantine q ON q.image_id = l.image_id
LEFT JOIN any_prediction ap ON ap.image_id = l.image_id
LEFT JOIN current_prediction cp
  ON cp.image_id = l.image_id AND cp.content_sha256 = l.content_sha256
WHERE coalesce(q.stage, '') <> 'listing'
  AND NOT (
    coalesce(s.content_sha256 = l.content_sha256, false)
    AND coalesce(f.content_sha256 = l.content_sha256, false)
    AND coalesce(f.feature_extraction_model = m.feature_tag, false)
    AND cp.image_id IS NOT NULL
    AND q.image_id IS NULL
  )
  AND NOT (
    coalesce(q.stage = 'silver' AND q.content_sha256 = l.content_sha256, false)
    AND s.image_id IS NULL
    AND f.image_id IS NULL
    AND ap.image_id IS NULL
  )
ORDER BY l.image_id
"""
"""Latest bronze version of every image that is not in its end state (module docstring) for the
current model: decode, validate and score these (`transforms.analyze_batch`), then write
`analyze_changes`."""

EVALUATION_INPUT = """
SELECT
  p.prediction_id, p.image_id, p.model_name, p.model_version, p.dataset_split,
  p.true_label, p.predicted_label, p.prediction_probability
FROM predictions p
JOIN silver s ON s.image_id = p.image_id AND s.content_sha256 = p.content_sha256
JOIN model m ON p.model_name = m.model_name AND p.model_version = m.model_version
"""
"""The predictions an evaluation of the current model covers: those of the current bytes of
images in silver (``predictions`` here needs the metric columns as well)."""

EVALUATION_COLUMNS = (
    "prediction_id",
    "image_id",
    "content_sha256",
    "model_name",
    "model_version",
    "dataset_split",
    "true_label",
    "predicted_label",
    "prediction_probability",
)
"""Columns of the ``predictions`` view `EVALUATION_INPUT` reads."""

PERFORMANCE_INSERTS = """
SELECT e.* FROM evaluations e
WHERE NOT EXISTS (SELECT 1 FROM performance x WHERE x.evaluation_id = e.evaluation_id)
"""
"""Evaluations of a prediction set not evaluated before: append them (deterministic ids)."""


ANALYZE_UPSERTS: dict[str, str] = {
    "features": "features",
    "silver": "metadata",
    "predictions": "predictions",
    "quarantine": "quarantine",
}
"""After `transforms.analyze_batch`: state view -> the output part MERGEd into it on its keys."""

ANALYZE_DELETES: dict[str, str] = {
    "quarantine": "metadata",
    "silver": "quarantine",
    "features": "quarantine",
    "predictions": "quarantine",
}
"""After `transforms.analyze_batch`: state view -> the output part whose image ids are deleted
from it. A good image leaves quarantine; a bad one leaves silver, features and every model's
predictions (gold follows silver)."""


PREDICTIONS_TO_REDECIDE = """
SELECT p.image_id, p.model_name, p.model_version, p.prediction_probability, p.true_label,
       p.predicted_label, d.threshold, d.threshold_source
FROM predictions p
JOIN model m ON p.model_name = m.model_name AND p.model_version = m.model_version
CROSS JOIN decision d
WHERE p.prediction_probability IS NOT NULL
  AND (p.decision_threshold IS DISTINCT FROM d.threshold
       OR p.threshold_source IS DISTINCT FROM d.threshold_source)
ORDER BY p.image_id
"""
"""Predictions of the run's model decided at another threshold than the run's (the one-row
``decision`` view: ``threshold``, ``threshold_source``), e.g. scored before ``--site`` chose a
site's threshold: re-decide them (label, ``is_correct``, threshold columns), so every current
prediction of a model carries the labels of the run's threshold. The ``predictions`` view needs
`REDECIDE_COLUMNS`."""

REDECIDE_COLUMNS = (
    "image_id",
    "model_name",
    "model_version",
    "prediction_probability",
    "true_label",
    "predicted_label",
    "decision_threshold",
    "threshold_source",
)


def model_row(model_name: str, model_version: str, feature_tag: str) -> pa.Table:
    """The one-row ``model`` view."""
    return pa.table(
        {
            "model_name": [model_name],
            "model_version": [model_version],
            "feature_tag": [feature_tag],
        },
        schema=MODEL_SCHEMA,
    )
