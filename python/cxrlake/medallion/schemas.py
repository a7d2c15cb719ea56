"""Single source of truth for the medallion tables: names, Arrow schemas, keys and properties.

Both engines adapt these: the local engine (`cxrlake.lakehouse`, delta-rs + DuckDB) and the Spark
engine (`cxrlake.spark`, whose Spark schemas are derived from these); ``sql/`` holds the same
columns as Databricks DDL. Nothing here imports an engine.

Type mapping (Arrow -> Delta / Spark SQL): ``string`` -> STRING, ``int32`` -> INT,
``int64`` -> BIGINT, ``float64`` -> DOUBLE, ``bool`` -> BOOLEAN, ``binary`` -> BINARY,
``timestamp[us, UTC]`` -> TIMESTAMP, ``date32`` -> DATE, ``list<float64>`` -> ARRAY<DOUBLE>.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa

from cxrlake import columns
from cxrlake.model import LABEL_NAMES as MODEL_LABEL_NAMES

CATALOG_PREFIX = "healthcare_catalog_"
"""Catalog name is ``healthcare_catalog_<env>`` (dev, pilot, prod ...)."""

LABEL_NAMES: tuple[str, ...] = MODEL_LABEL_NAMES
"""Class names (the model contract's); the index is the integer label (0 = NORMAL, 1 =
PNEUMONIA)."""

TABLE_PROPERTIES: dict[str, str] = {
    "delta.enableChangeDataFeed": "true",
    # Let readers keep deleted files a week (VACUUM default retention, time travel).
    "delta.deletedFileRetentionDuration": "interval 7 days",
    "delta.logRetentionDuration": "interval 30 days",
}
"""Delta table properties of every lakehouse table (Change Data Feed on)."""

QUARANTINE_MIN_SIDE_PX = 64
"""Quarantine rule, validation part: a decoded image narrower or lower than this many pixels is
quarantined (`image WxH smaller than 64 px minimum`)."""
# The other parts of the rule: any row for which the Rust core returns an error (decode failure,
# empty file, not an image, limits exceeded) is quarantined with that error string as reason; a
# DICOM file whose metadata cannot be read, or whose BurnedInAnnotation is YES, is quarantined
# with the reason `medallion.transforms.dicom_silver_metadata` gives.

TS = pa.timestamp("us", tz="UTC")

HEATMAP = columns.HEATMAP
"""Type of ``gold.pneumonia_predictions.heatmap`` (as returned by `cxrlake.analyze`)."""

BRONZE_METADATA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("filename", pa.string()),
        pa.field("category", pa.string()),  # NORMAL / PNEUMONIA / NULL when unlabelled
        pa.field("dataset_split", pa.string()),
        pa.field("file_path", pa.string()),
        pa.field("file_size_bytes", pa.int64()),
        pa.field("ingested_at", TS),
        pa.field("ingestion_batch_id", pa.string()),
        # extra columns (audit / incremental ingestion)
        pa.field("content_sha256", pa.string()),  # hex sha256 of the file bytes
        pa.field("source_modified_at", TS),  # file mtime at ingestion
        pa.field("content", pa.binary()),  # the image bytes (silver/gold read them from here)
        # DICOM files only: the DICOM JSON model (PS3.18 F.2) of the header, without pixel data
        # or other bulk data (`cxrlake.dicom_metadata`); protected health information stays here.
        # NULL for JPEG/PNG.
        pa.field("dicom_metadata", pa.string()),
    ]
)
"""``bronze.kaggle_xray_metadata``: append-only; one row per (image_id, content_sha256) version."""

SILVER_METADATA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("label", pa.int32()),
        pa.field("label_name", pa.string()),
        pa.field("dataset_split", pa.string()),
        pa.field("file_path", pa.string()),
        pa.field("image_width", pa.int32()),
        pa.field("image_height", pa.int32()),
        pa.field("quality_score", pa.float64()),  # 0..1, from the Rust core
        pa.field("processed_at", TS),
        pa.field("source_batch_id", pa.string()),  # bronze ingestion_batch_id
        # extra columns
        pa.field("filename", pa.string()),
        pa.field("content_sha256", pa.string()),
        pa.field("file_size_bytes", pa.int64()),
        # DICOM files only: bronze's dicom_metadata de-identified by `cxrlake.deid` (PS3.15 Basic
        # Profile, keyed pseudonyms, shifted dates), as DICOM JSON; NULL for JPEG/PNG.
        pa.field("dicom_metadata_deid", pa.string()),
    ]
)
"""``silver.xray_metadata``: one row per image_id (MERGE on image_id), good images only."""

SILVER_FEATURES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("feature_vector", pa.list_(pa.float64())),
        pa.field("feature_extraction_model", pa.string()),  # "<model_name>:<model_version>"
        pa.field("mean_pixel_value", pa.float64()),  # 8-bit grayscale, 0..255
        pa.field("std_pixel_value", pa.float64()),  # 8-bit grayscale, 0..255
        pa.field("extracted_at", TS),
        # extra columns
        pa.field("content_sha256", pa.string()),
    ]
)
"""``silver.image_features``: one row per image_id (MERGE on image_id)."""

SILVER_QUARANTINE = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("filename", pa.string()),
        pa.field("file_path", pa.string()),
        pa.field("dataset_split", pa.string()),
        pa.field("category", pa.string()),
        pa.field("file_size_bytes", pa.int64()),
        pa.field("content_sha256", pa.string()),  # NULL when the file could not be read
        pa.field("stage", pa.string()),  # "listing" (not a regular file) or "silver" (decode)
        pa.field("reason", pa.string()),  # error string of the Rust core or of the listing
        pa.field("source_batch_id", pa.string()),
        pa.field("quarantined_at", TS),
    ]
)
"""``silver.quarantine``: images that failed decoding or validation, one row per image_id
(MERGE on image_id); a row is deleted once a later version of the file passes."""

GOLD_PREDICTIONS = pa.schema(
    [
        pa.field("prediction_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("predicted_label", pa.int32()),
        pa.field("prediction_probability", pa.float64()),  # P(PNEUMONIA)
        pa.field("confidence_score", pa.float64()),  # max(p, 1 - p)
        pa.field("true_label", pa.int32()),  # NULL when unlabelled
        pa.field("is_correct", pa.bool_()),  # NULL when unlabelled
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("predicted_at", TS),
        pa.field("prediction_date", pa.date32()),
        # extra columns
        pa.field("dataset_split", pa.string()),
        pa.field("content_sha256", pa.string()),
        # class-activation heatmap of the same forward pass; NULL when the model has none
        pa.field("heatmap", HEATMAP),
        # the threshold that decided predicted_label, and where it came from: "model" (the ONNX
        # metadata cxrlake.threshold) or "site:<site_id>:v<version>" (gold.site_thresholds)
        pa.field("decision_threshold", pa.float64()),
        pa.field("threshold_source", pa.string()),
        # out-of-distribution flag of the same forward pass (cxrlake.predict's columns): the
        # film is still scored and stored; NULL for rows written before the flag existed
        pa.field("ood_score", pa.float64()),
        pa.field("out_of_distribution", pa.bool_()),
        pa.field("ood_reason", pa.string()),
    ]
)
"""``gold.pneumonia_predictions``: one row per (image_id, model_name, model_version), MERGEd on
those keys; ``prediction_id`` is deterministic (see `identity.prediction_id`)."""

GOLD_PERFORMANCE = pa.schema(
    [
        pa.field("evaluation_id", pa.string(), nullable=False),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("dataset_split", pa.string()),
        pa.field("accuracy", pa.float64()),
        pa.field("precision", pa.float64()),
        pa.field("recall", pa.float64()),
        pa.field("f1_score", pa.float64()),
        pa.field("auc_roc", pa.float64()),  # NULL when the split holds one class only
        pa.field("confusion_matrix", pa.string()),  # JSON, see metrics.model_performance
        pa.field("total_samples", pa.int64()),
        pa.field("evaluated_at", TS),
        pa.field("evaluation_date", pa.date32()),
        # extra columns
        pa.field("threshold", pa.float64()),
        pa.field("predictions_fingerprint", pa.string()),
        # how many of total_samples were flagged out of distribution (they are included)
        pa.field("flagged_samples", pa.int64()),
    ]
)
"""``gold.model_performance``: one row per labelled split and distinct prediction set;
``evaluation_id`` is deterministic, so an unchanged run writes nothing."""


GOLD_SITE_THRESHOLDS = pa.schema(
    [
        pa.field("site_id", pa.string(), nullable=False),
        pa.field("version", pa.int32(), nullable=False),  # 1, 2, ... per (site, model)
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("threshold", pa.float64(), nullable=False),  # predicted = probability >= this
        pa.field("target_sensitivity", pa.float64()),
        pa.field("sensitivity", pa.float64()),
        pa.field("sensitivity_ci_low", pa.float64()),  # 95 % Wilson interval
        pa.field("sensitivity_ci_high", pa.float64()),
        pa.field("specificity", pa.float64()),
        pa.field("specificity_ci_low", pa.float64()),
        pa.field("specificity_ci_high", pa.float64()),
        pa.field("n_pneumonia", pa.int64()),
        pa.field("n_normal", pa.int64()),
        pa.field("label_source", pa.string()),  # folder / verdicts
        pa.field("selection", pa.string()),  # JSON: which bronze films make up the site
        pa.field("calibration_id", pa.string()),  # sha256 of model, target, films and labels
        pa.field("calibrated_at", TS),
    ]
)
"""``gold.site_thresholds``: append-only, one row per calibration of a site for a model version
(``cxrlake calibrate``); the latest version of (site, model name, model version) is in force."""


GOLD_DRIFT_METRICS = pa.schema(
    [
        pa.field("site_id", pa.string(), nullable=False),  # the source folder's dataset_split
        pa.field("run_date", pa.date32(), nullable=False),  # prediction_date
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("film_count", pa.int64()),
        pa.field("positive_rate", pa.float64()),  # share predicted PNEUMONIA
        pa.field("mean_probability", pa.float64()),
        # population stability index of the probability (10 equal-width bins) against the
        # training films' histogram shipped with the model; NULL when the model has none
        pa.field("probability_psi", pa.float64()),
        pa.field("flagged_count", pa.int64()),  # out_of_distribution films
        pa.field("flagged_share", pa.float64()),
        pa.field("mean_ood_score", pa.float64()),
        pa.field("mean_quality_score", pa.float64()),
        # (mean quality score - training mean) / training std
        pa.field("quality_shift", pa.float64()),
        pa.field("reference_positive_rate", pa.float64()),
        pa.field("computed_at", TS),
    ]
)
"""``gold.drift_metrics``: per site (source folder), run date and model version, how the scored
films compare with the training films (`cxrlake.medallion.rules.DRIFT_METRICS`); MERGEd on
the keys, so a re-run replaces a group's row and adds none."""


@dataclass(frozen=True)
class TableSpec:
    """A lakehouse table: ``schema.name``, its Arrow schema and its merge keys."""

    schema_name: str
    name: str
    arrow_schema: pa.Schema
    keys: tuple[str, ...]
    """Columns that identify a row (MERGE keys); bronze is append-only on these."""

    @property
    def qualified_name(self) -> str:
        """``<schema>.<table>``, e.g. ``bronze.kaggle_xray_metadata``."""
        return f"{self.schema_name}.{self.name}"

    def path(self, lakehouse: str | os.PathLike[str], env: str = "dev") -> str:
        """Local Delta path ``<lakehouse>/healthcare_catalog_<env>/<schema>/<table>``."""
        return os.path.join(catalog_path(lakehouse, env), self.schema_name, self.name)


BRONZE = TableSpec(
    "bronze", "kaggle_xray_metadata", BRONZE_METADATA, ("image_id", "content_sha256")
)
SILVER = TableSpec("silver", "xray_metadata", SILVER_METADATA, ("image_id",))
FEATURES = TableSpec("silver", "image_features", SILVER_FEATURES, ("image_id",))
QUARANTINE = TableSpec("silver", "quarantine", SILVER_QUARANTINE, ("image_id",))
PREDICTIONS = TableSpec(
    "gold", "pneumonia_predictions", GOLD_PREDICTIONS, ("image_id", "model_name", "model_version")
)
PERFORMANCE = TableSpec("gold", "model_performance", GOLD_PERFORMANCE, ("evaluation_id",))
SITE_THRESHOLDS = TableSpec(
    "gold",
    "site_thresholds",
    GOLD_SITE_THRESHOLDS,
    ("site_id", "model_name", "model_version", "version"),
)

DRIFT_METRICS = TableSpec(
    "gold",
    "drift_metrics",
    GOLD_DRIFT_METRICS,
    ("site_id", "run_date", "model_name", "model_version"),
)

TABLES: tuple[TableSpec, ...] = (
    BRONZE,
    SILVER,
    FEATURES,
    QUARANTINE,
    PREDICTIONS,
    PERFORMANCE,
    SITE_THRESHOLDS,
    DRIFT_METRICS,
)
"""Every Delta table of the lakehouse, in pipeline order."""

# ---------------------------------------------------------------- review loop (cxrlake.review)
GOLD_FEEDBACK = pa.schema(
    [
        pa.field("feedback_id", pa.string(), nullable=False),  # 32 hex digits (uuid4)
        pa.field("prediction_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("radiologist_id", pa.string(), nullable=False),
        pa.field("feedback_type", pa.string(), nullable=False),  # agree / disagree / uncertain
        pa.field("correct_label", pa.string()),  # NORMAL / PNEUMONIA; NULL when uncertain
        pa.field("confidence_level", pa.string()),  # low / medium / high
        pa.field("comments", pa.string()),  # free text, at most 2000 characters
        pa.field("feedback_timestamp", TS, nullable=False),
    ]
)
"""``gold.prediction_feedback``: append-only radiologist verdicts; a changed verdict is a new
row, the latest per (prediction_id, radiologist_id) counts."""

SILVER_LABEL_HISTORY = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("label", pa.int32()),
        pa.field("label_name", pa.string()),
        pa.field("source", pa.string(), nullable=False),  # 'folder' or the radiologist id
        pa.field("feedback_id", pa.string()),  # the verdict that set this label; NULL for folder
        pa.field("valid_from", TS, nullable=False),
        pa.field("valid_to", TS),  # NULL while current
        pa.field("is_current", pa.bool_(), nullable=False),
        # the bytes a radiologist's label judged (the prediction's); NULL for folder labels
        pa.field("content_sha256", pa.string()),
    ]
)
"""``silver.label_history``: SCD type 2 of every image's label, one row per (image_id,
valid_from). A radiologist's label whose ``content_sha256`` is not the image's current one was
given on earlier bytes: the worklist marks it and brings the image back."""

GOLD_REVIEW_AGREEMENT = pa.schema(
    [
        pa.field("evaluation_id", pa.string(), nullable=False),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("reviewed_predictions", pa.int64()),
        pa.field("verdicts", pa.int64()),  # latest verdicts (one per prediction and reviewer)
        pa.field("agreement_rate", pa.float64()),  # model label == radiologist label
        pa.field("cohen_kappa", pa.float64()),  # model vs radiologist, NULL when undefined
        pa.field("accuracy_current_labels", pa.float64()),  # model vs current labels
        pa.field("labels_corrected", pa.int64()),  # current label from a radiologist
        pa.field("per_reviewer", pa.string()),  # JSON {reviewer: {agree, disagree, ...}}
        pa.field("evaluated_at", TS),
        pa.field("feedback_fingerprint", pa.string()),
    ]
)
"""``gold.review_agreement``: `cxrlake.medallion.metrics.agreement_metrics` rows, one per model
and distinct set of verdicts."""

FEEDBACK = TableSpec("gold", "prediction_feedback", GOLD_FEEDBACK, ("feedback_id",))
LABEL_HISTORY = TableSpec(
    "silver", "label_history", SILVER_LABEL_HISTORY, ("image_id", "valid_from")
)
REVIEW_AGREEMENT = TableSpec("gold", "review_agreement", GOLD_REVIEW_AGREEMENT, ("evaluation_id",))
REVIEW_TABLES: tuple[TableSpec, ...] = (FEEDBACK, LABEL_HISTORY, REVIEW_AGREEMENT)
"""Tables of the review loop: written by the review app, not by the pipeline (not in `TABLES`)."""

DATASET_SUMMARY_VIEW = "gold.dataset_summary"
"""View (DuckDB locally, SQL view on Databricks): counts by split and label plus the quality-score
distribution of silver.xray_metadata and the quarantine count. SQL: `DATASET_SUMMARY_SQL`."""

DATASET_SUMMARY_SQL = """
SELECT
  m.dataset_split,
  coalesce(m.label_name, 'UNLABELLED') AS label_name,
  count(*) AS image_count,
  avg(m.quality_score) AS quality_mean,
  min(m.quality_score) AS quality_min,
  quantile_cont(m.quality_score, 0.25) AS quality_p25,
  quantile_cont(m.quality_score, 0.5) AS quality_median,
  quantile_cont(m.quality_score, 0.75) AS quality_p75,
  max(m.quality_score) AS quality_max,
  avg(m.image_width) AS mean_width,
  avg(m.image_height) AS mean_height
FROM silver.xray_metadata AS m
GROUP BY ALL
ORDER BY 1, 2
"""
"""Body of `DATASET_SUMMARY_VIEW` (DuckDB dialect; also valid Spark SQL except ``quantile_cont``,
which is ``percentile_cont(q) WITHIN GROUP (ORDER BY ...)`` there)."""


def catalog_path(lakehouse: str | os.PathLike[str], env: str = "dev") -> str:
    """Directory of the local catalog: ``<lakehouse>/healthcare_catalog_<env>``."""
    validate_env(env)
    return os.path.join(os.fspath(lakehouse), CATALOG_PREFIX + env)


def validate_env(env: str) -> str:
    """Return ``env`` if it is a valid environment name (lowercase letters, digits, ``_``)."""
    if not env or not all(c.islower() or c.isdigit() or c == "_" for c in env):
        raise ValueError(
            f"invalid env {env!r}: use lowercase letters, digits and '_' (e.g. dev, pilot, prod)"
        )
    return env
