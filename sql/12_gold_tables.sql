-- Gold: predictions per (image_id, model_name, model_version) and model performance per labelled
-- split. Columns exactly as python/cxrlake/lakehouse/schemas.py (checked by tests).
-- Parameters: ${catalog}, ${gold_schema} (the schema name the bundle deploys in this target).
-- Liquid clustering on the MERGE key instead of ZORDER (Databricks recommends it for new tables:
-- https://docs.databricks.com/aws/en/delta/clustering); OPTIMIZE then clusters by it.

CREATE TABLE IF NOT EXISTS ${catalog}.${gold_schema}.pneumonia_predictions (
  prediction_id STRING NOT NULL COMMENT 'Deterministic id of (image_id, model, version, sha256)',
  image_id STRING NOT NULL COMMENT 'Image id',
  predicted_label INT COMMENT '1 when prediction_probability >= the model threshold',
  prediction_probability DOUBLE COMMENT 'P(PNEUMONIA)',
  confidence_score DOUBLE COMMENT 'max(p, 1 - p)',
  true_label INT COMMENT 'Label from the folder; NULL when unlabelled',
  is_correct BOOLEAN COMMENT 'predicted_label = true_label; NULL when unlabelled',
  model_name STRING COMMENT 'Model name (ONNX metadata)',
  model_version STRING COMMENT 'Model version (ONNX metadata)',
  predicted_at TIMESTAMP COMMENT 'When this row was written (UTC)',
  prediction_date DATE COMMENT 'predicted_at as a date (UTC)',
  dataset_split STRING COMMENT 'train, val, test or fullres',
  content_sha256 STRING COMMENT 'Hex sha256 of the scored bytes',
  heatmap STRUCT<rows: INT, cols: INT, values: ARRAY<FLOAT>> COMMENT 'Class-activation heatmap of the same forward pass (row-major logit contributions: cxrlake.head_bias + mean(values) = logit); NULL when the model has none',
  decision_threshold DOUBLE COMMENT 'The threshold that decided predicted_label',
  threshold_source STRING COMMENT 'model (ONNX metadata) or site:<site_id>:v<version> (site_thresholds)',
  ood_score DOUBLE COMMENT 'Out-of-distribution score of the same forward pass (higher = less like the training films)',
  out_of_distribution BOOLEAN COMMENT 'ood_score above the model threshold, or a DICOM Modality/ViewPosition that is not a frontal radiograph; still scored',
  ood_reason STRING COMMENT 'Why the film is flagged; NULL when not flagged'
)
USING DELTA
CLUSTER BY (image_id)
COMMENT 'Pneumonia predictions, one row per image and model version'
TBLPROPERTIES (
  'delta.enableChangeDataFeed' = 'true',
  'delta.deletedFileRetentionDuration' = 'interval 7 days',
  'delta.logRetentionDuration' = 'interval 30 days'
);

CREATE TABLE IF NOT EXISTS ${catalog}.${gold_schema}.model_performance (
  evaluation_id STRING NOT NULL COMMENT 'Deterministic id of (model, version, split, predictions)',
  model_name STRING COMMENT 'Model name',
  model_version STRING COMMENT 'Model version',
  dataset_split STRING COMMENT 'Labelled split evaluated',
  accuracy DOUBLE COMMENT 'Accuracy at the model threshold',
  precision DOUBLE COMMENT 'Precision (PNEUMONIA positive)',
  recall DOUBLE COMMENT 'Recall / sensitivity (PNEUMONIA positive)',
  f1_score DOUBLE COMMENT 'F1 score',
  auc_roc DOUBLE COMMENT 'ROC AUC; NULL when the split holds one class only',
  confusion_matrix STRING COMMENT 'JSON {"tn":..,"fp":..,"fn":..,"tp":..}',
  total_samples BIGINT COMMENT 'Predictions evaluated',
  evaluated_at TIMESTAMP COMMENT 'When this row was written (UTC)',
  evaluation_date DATE COMMENT 'evaluated_at as a date (UTC)',
  threshold DOUBLE COMMENT 'Decision threshold of the model',
  predictions_fingerprint STRING COMMENT 'Hash of the evaluated prediction set',
  flagged_samples BIGINT COMMENT 'How many of total_samples were flagged out of distribution (included)'
)
USING DELTA
CLUSTER BY (evaluation_id)
COMMENT 'Model performance per labelled split, one row per distinct prediction set'
TBLPROPERTIES (
  'delta.enableChangeDataFeed' = 'true',
  'delta.deletedFileRetentionDuration' = 'interval 7 days',
  'delta.logRetentionDuration' = 'interval 30 days'
);

CREATE TABLE IF NOT EXISTS ${catalog}.${gold_schema}.site_thresholds (
  site_id STRING NOT NULL COMMENT 'Site id (cxrlake calibrate --site)',
  version INT NOT NULL COMMENT '1, 2, ... per (site, model name, model version); the latest is in force',
  model_name STRING NOT NULL COMMENT 'Model the threshold was calibrated for',
  model_version STRING NOT NULL COMMENT 'Model version the threshold was calibrated for',
  threshold DOUBLE NOT NULL COMMENT 'predicted_label = probability >= threshold',
  target_sensitivity DOUBLE COMMENT 'Sensitivity the threshold was chosen for',
  sensitivity DOUBLE COMMENT 'Sensitivity on the site films',
  sensitivity_ci_low DOUBLE COMMENT '95% Wilson interval, low',
  sensitivity_ci_high DOUBLE COMMENT '95% Wilson interval, high',
  specificity DOUBLE COMMENT 'Specificity on the site films',
  specificity_ci_low DOUBLE COMMENT '95% Wilson interval, low',
  specificity_ci_high DOUBLE COMMENT '95% Wilson interval, high',
  n_pneumonia BIGINT COMMENT 'PNEUMONIA films used',
  n_normal BIGINT COMMENT 'NORMAL films used',
  label_source STRING COMMENT 'folder or verdicts',
  selection STRING COMMENT 'JSON: which bronze films make up the site',
  calibration_id STRING COMMENT 'sha256 of model, target, films and labels',
  calibrated_at TIMESTAMP COMMENT 'When this version was written (UTC)'
)
USING DELTA
CLUSTER BY (site_id, model_name, model_version, `version`)  -- quoted: open-source Delta reads a bare VERSION there as an expression
COMMENT 'Per-site operating points (cxrlake calibrate), append-only, versioned'
TBLPROPERTIES (
  'delta.enableChangeDataFeed' = 'true',
  'delta.deletedFileRetentionDuration' = 'interval 7 days',
  'delta.logRetentionDuration' = 'interval 30 days'
);

CREATE TABLE IF NOT EXISTS ${catalog}.${gold_schema}.drift_metrics (
  site_id STRING NOT NULL COMMENT 'Site: the dataset_split of the source folder',
  run_date DATE NOT NULL COMMENT 'prediction_date of the films',
  model_name STRING NOT NULL COMMENT 'Model name',
  model_version STRING NOT NULL COMMENT 'Model version',
  film_count BIGINT COMMENT 'Films scored',
  positive_rate DOUBLE COMMENT 'Share predicted PNEUMONIA',
  mean_probability DOUBLE COMMENT 'Mean P(PNEUMONIA)',
  probability_psi DOUBLE COMMENT 'Population stability index of the probability (10 bins) against the training films',
  flagged_count BIGINT COMMENT 'Films flagged out of distribution',
  flagged_share DOUBLE COMMENT 'Share flagged out of distribution',
  mean_ood_score DOUBLE COMMENT 'Mean ood_score',
  mean_quality_score DOUBLE COMMENT 'Mean quality_score',
  quality_shift DOUBLE COMMENT '(mean quality_score - training mean) / training std',
  reference_positive_rate DOUBLE COMMENT 'Positive rate of the training films',
  computed_at TIMESTAMP COMMENT 'When this row was written (UTC)'
)
USING DELTA
CLUSTER BY (site_id, run_date)
COMMENT 'Drift of scored films against the training films, per site, run date and model version'
TBLPROPERTIES (
  'delta.enableChangeDataFeed' = 'true',
  'delta.deletedFileRetentionDuration' = 'interval 7 days',
  'delta.logRetentionDuration' = 'interval 30 days'
);
