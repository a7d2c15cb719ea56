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
from cxrlake.model import DriftReference

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
  p.true_label, p.predicted_label, p.prediction_probability, p.out_of_distribution
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
    "out_of_distribution",
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


# ---------------------------------------------------------------- drift (gold.drift_metrics)
DRIFT_BINS = 10
"""Equal-width probability bins of the population stability index (as the training reference
of `cxrlake.training.ood.drift_reference` bins them)."""

DRIFT_REFERENCE_SCHEMA = pa.schema(
    [
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("bin", pa.int32()),
        pa.field("reference_share", pa.float64()),
        pa.field("quality_mean", pa.float64()),
        pa.field("quality_std", pa.float64()),
        pa.field("positive_rate", pa.float64()),
    ]
)
"""Schema of the ``drift_reference`` view: the training films' share per probability bin and
their quality-score mean and std (`cxrlake.Model.drift_reference`); no rows when the model
carries no reference (the PSI and quality shift are then NULL)."""

DRIFT_PREDICTION_COLUMNS = (
    "image_id",
    "content_sha256",
    "model_name",
    "model_version",
    "dataset_split",
    "prediction_date",
    "prediction_probability",
    "predicted_label",
    "out_of_distribution",
    "ood_score",
)
"""Columns of the ``predictions`` view `DRIFT_METRICS` reads (``silver`` also needs
``quality_score``; ``drift`` is ``gold.drift_metrics``)."""

DRIFT_METRICS = f"""
WITH scored AS (
  SELECT
    coalesce(p.dataset_split, 'unknown') AS site_id,
    p.prediction_date AS run_date,
    p.model_name,
    p.model_version,
    p.prediction_probability AS probability,
    p.predicted_label,
    p.out_of_distribution,
    p.ood_score,
    s.quality_score,
    CAST(CASE WHEN p.prediction_probability >= 1.0 THEN {DRIFT_BINS - 1}
              ELSE floor(p.prediction_probability * {DRIFT_BINS}) END AS INT) AS bin
  FROM predictions p
  JOIN model m ON p.model_name = m.model_name AND p.model_version = m.model_version
  LEFT JOIN silver s ON s.image_id = p.image_id AND s.content_sha256 = p.content_sha256
  WHERE p.prediction_probability IS NOT NULL AND p.prediction_date IS NOT NULL
),
groups AS (
  SELECT
    site_id, run_date, model_name, model_version,
    count(*) AS film_count,
    avg(CAST(predicted_label AS DOUBLE)) AS positive_rate,
    avg(probability) AS mean_probability,
    sum(CASE WHEN out_of_distribution THEN 1 ELSE 0 END) AS flagged_count,
    avg(ood_score) AS mean_ood_score,
    avg(quality_score) AS mean_quality_score
  FROM scored
  GROUP BY site_id, run_date, model_name, model_version
),
binned AS (
  SELECT site_id, run_date, model_name, model_version, bin, count(*) AS n
  FROM scored
  GROUP BY site_id, run_date, model_name, model_version, bin
),
shares AS (
  SELECT
    g.site_id, g.run_date, g.model_name, g.model_version,
    greatest(CAST(coalesce(b.n, 0) AS DOUBLE) / g.film_count, 0.0001) AS actual,
    greatest(r.reference_share, 0.0001) AS expected
  FROM groups g
  JOIN drift_reference r ON r.model_name = g.model_name AND r.model_version = g.model_version
  LEFT JOIN binned b
    ON b.site_id = g.site_id AND b.run_date = g.run_date AND b.model_name = g.model_name
   AND b.model_version = g.model_version AND b.bin = r.bin
),
psi AS (
  SELECT site_id, run_date, model_name, model_version,
         sum((actual - expected) * ln(actual / expected)) AS probability_psi
  FROM shares
  GROUP BY site_id, run_date, model_name, model_version
),
reference AS (
  SELECT model_name, model_version, max(quality_mean) AS quality_mean,
         max(quality_std) AS quality_std, max(positive_rate) AS positive_rate
  FROM drift_reference
  GROUP BY model_name, model_version
),
metrics AS (
  SELECT
    g.site_id, g.run_date, g.model_name, g.model_version,
    CAST(g.film_count AS BIGINT) AS film_count,
    round(g.positive_rate, 9) AS positive_rate,
    round(g.mean_probability, 9) AS mean_probability,
    round(x.probability_psi, 9) AS probability_psi,
    CAST(g.flagged_count AS BIGINT) AS flagged_count,
    round(CAST(g.flagged_count AS DOUBLE) / g.film_count, 9) AS flagged_share,
    round(g.mean_ood_score, 9) AS mean_ood_score,
    round(g.mean_quality_score, 9) AS mean_quality_score,
    round(CASE WHEN r.quality_std > 0
               THEN (g.mean_quality_score - r.quality_mean) / r.quality_std END, 9)
      AS quality_shift,
    r.positive_rate AS reference_positive_rate
  FROM groups g
  LEFT JOIN psi x
    ON x.site_id = g.site_id AND x.run_date = g.run_date AND x.model_name = g.model_name
   AND x.model_version = g.model_version
  LEFT JOIN reference r ON r.model_name = g.model_name AND r.model_version = g.model_version
)
SELECT t.* FROM metrics t
WHERE NOT EXISTS (
  SELECT 1 FROM drift d
  WHERE d.site_id = t.site_id AND d.run_date = t.run_date AND d.model_name = t.model_name
    AND d.model_version = t.model_version AND d.film_count = t.film_count
    AND d.positive_rate IS NOT DISTINCT FROM t.positive_rate
    AND d.mean_probability IS NOT DISTINCT FROM t.mean_probability
    AND d.probability_psi IS NOT DISTINCT FROM t.probability_psi
    AND d.flagged_count IS NOT DISTINCT FROM t.flagged_count
    AND d.mean_ood_score IS NOT DISTINCT FROM t.mean_ood_score
    AND d.mean_quality_score IS NOT DISTINCT FROM t.mean_quality_score
    AND d.quality_shift IS NOT DISTINCT FROM t.quality_shift
)
ORDER BY t.site_id, t.run_date
"""
"""``gold.drift_metrics`` rows of the current model that are new or changed (MERGE them on the
keys, with ``computed_at``): per site (the source folder's ``dataset_split``), run date
(``prediction_date``) and model version: film count, positive rate, mean probability, the
population stability index ``sum((a - e) ln(a / e))`` of the probability over `DRIFT_BINS`
equal-width bins against the training films (shares floored at 0.0001), the flagged count and
share, the mean OOD score, the mean quality score and its shift in training standard deviations.
Rounded to 9 decimals so both engines (and a re-run) give identical values."""


def drift_reference_rows(
    model_name: str, model_version: str, reference: DriftReference | None
) -> pa.Table:
    """The ``drift_reference`` view of a model's ``cxrlake.drift_reference`` (no rows: None)."""
    shares = (reference or {}).get("probability_bins") or []
    n = len(shares)
    return pa.table(
        {
            "model_name": [model_name] * n,
            "model_version": [model_version] * n,
            "bin": list(range(n)),
            "reference_share": [float(s) for s in shares],
            "quality_mean": [reference.get("quality_mean") if reference else None] * n,
            "quality_std": [reference.get("quality_std") if reference else None] * n,
            "positive_rate": [reference.get("positive_rate") if reference else None] * n,
        },
        schema=DRIFT_REFERENCE_SCHEMA,
    )
