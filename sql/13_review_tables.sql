-- Review loop: radiologist verdicts (gold.prediction_feedback, append-only), the label history
-- (silver.label_history, SCD type 2) and the model-radiologist agreement figures
-- (gold.review_agreement). Columns exactly as python/cxrlake/medallion/schemas.py (checked by tests).
-- Parameters: ${catalog}, ${silver_schema}, ${gold_schema} (the schema names the bundle deploys in
-- this target). Liquid clustering on the row key (https://docs.databricks.com/aws/en/delta/clustering).

CREATE TABLE IF NOT EXISTS ${catalog}.${gold_schema}.prediction_feedback (
  feedback_id STRING NOT NULL COMMENT '32 hex digits, chosen by the app; a repeated id writes nothing',
  prediction_id STRING NOT NULL COMMENT 'gold.pneumonia_predictions.prediction_id',
  image_id STRING NOT NULL COMMENT 'Image id',
  radiologist_id STRING NOT NULL COMMENT 'Reviewer: Databricks Apps user email, or the local user',
  feedback_type STRING NOT NULL COMMENT 'agree, disagree or uncertain',
  correct_label STRING COMMENT 'NORMAL or PNEUMONIA; NULL when uncertain',
  confidence_level STRING COMMENT 'low, medium or high',
  comments STRING COMMENT 'Free text, at most 2000 characters',
  feedback_timestamp TIMESTAMP NOT NULL COMMENT 'When the verdict was recorded (UTC)'
)
USING DELTA
CLUSTER BY (feedback_id)
COMMENT 'Radiologist verdicts on predictions, append-only; the latest per prediction and reviewer counts'
TBLPROPERTIES (
  'delta.enableChangeDataFeed' = 'true',
  'delta.deletedFileRetentionDuration' = 'interval 7 days',
  'delta.logRetentionDuration' = 'interval 30 days',
  'delta.appendOnly' = 'true'
);

CREATE TABLE IF NOT EXISTS ${catalog}.${silver_schema}.label_history (
  image_id STRING NOT NULL COMMENT 'Image id',
  label INT COMMENT '0 = NORMAL, 1 = PNEUMONIA',
  label_name STRING COMMENT 'NORMAL or PNEUMONIA',
  source STRING NOT NULL COMMENT 'folder (the label folder) or the radiologist id',
  feedback_id STRING COMMENT 'Verdict that set this label; NULL for the folder label',
  valid_from TIMESTAMP NOT NULL COMMENT 'Start of validity (UTC)',
  valid_to TIMESTAMP COMMENT 'End of validity (UTC); NULL while current',
  is_current BOOLEAN NOT NULL COMMENT 'The label in force',
  content_sha256 STRING COMMENT 'Bytes a radiologist label judged (sha256); NULL for the folder label'
)
USING DELTA
CLUSTER BY (image_id, valid_from)
COMMENT 'Label history per image, SCD type 2: folder label, then radiologist corrections'
TBLPROPERTIES (
  'delta.enableChangeDataFeed' = 'true',
  'delta.deletedFileRetentionDuration' = 'interval 7 days',
  'delta.logRetentionDuration' = 'interval 30 days'
);

CREATE TABLE IF NOT EXISTS ${catalog}.${gold_schema}.review_agreement (
  evaluation_id STRING NOT NULL COMMENT 'Deterministic id of (model, version, verdict set)',
  model_name STRING COMMENT 'Model name',
  model_version STRING COMMENT 'Model version',
  reviewed_predictions BIGINT COMMENT 'Predictions with at least one verdict',
  verdicts BIGINT COMMENT 'Latest verdicts, one per prediction and reviewer',
  agreement_rate DOUBLE COMMENT 'Share of decisive verdicts whose label is the model label',
  cohen_kappa DOUBLE COMMENT 'Cohen kappa, model vs radiologist; NULL when undefined',
  accuracy_current_labels DOUBLE COMMENT 'Model accuracy against the current labels',
  labels_corrected BIGINT COMMENT 'Images whose current label comes from a radiologist',
  per_reviewer STRING COMMENT 'JSON {reviewer: {agree, disagree, uncertain, differs_from_current_label}}',
  evaluated_at TIMESTAMP COMMENT 'When this row was written (UTC)',
  feedback_fingerprint STRING COMMENT 'Hash of the verdict set'
)
USING DELTA
CLUSTER BY (evaluation_id)
COMMENT 'Model-radiologist agreement, one row per model and distinct verdict set'
TBLPROPERTIES (
  'delta.enableChangeDataFeed' = 'true',
  'delta.deletedFileRetentionDuration' = 'interval 7 days',
  'delta.logRetentionDuration' = 'interval 30 days'
);
