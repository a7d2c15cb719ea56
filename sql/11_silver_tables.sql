-- Silver: decoded and validated images, their features, and the quarantine of files that fail
-- decoding or validation. MERGEd on image_id. Columns exactly as
-- python/cxrlake/lakehouse/schemas.py (checked by tests).
-- Parameters: ${catalog}, ${silver_schema} (the schema name the bundle deploys in this target).
-- Liquid clustering on the MERGE key instead of ZORDER (Databricks recommends it for new tables:
-- https://docs.databricks.com/aws/en/delta/clustering); OPTIMIZE then clusters by it.

CREATE TABLE IF NOT EXISTS ${catalog}.${silver_schema}.xray_metadata (
  image_id STRING NOT NULL COMMENT 'Image id (bronze.kaggle_xray_metadata.image_id)',
  label INT COMMENT '0 = NORMAL, 1 = PNEUMONIA, NULL when unlabelled',
  label_name STRING COMMENT 'NORMAL or PNEUMONIA',
  dataset_split STRING COMMENT 'train, val, test or fullres',
  file_path STRING COMMENT 'Path of the file at ingestion',
  image_width INT COMMENT 'Decoded width in pixels (after EXIF orientation)',
  image_height INT COMMENT 'Decoded height in pixels (after EXIF orientation)',
  quality_score DOUBLE COMMENT 'Image quality score, 0..1 (Rust core)',
  processed_at TIMESTAMP COMMENT 'When this row was written (UTC)',
  source_batch_id STRING COMMENT 'bronze ingestion_batch_id of the source row',
  filename STRING COMMENT 'File name',
  content_sha256 STRING COMMENT 'Hex sha256 of the file bytes',
  file_size_bytes BIGINT COMMENT 'Size of the file in bytes',
  dicom_metadata_deid STRING COMMENT 'DICOM files only: the header de-identified (PS3.15 Basic Profile, keyed pseudonyms, shifted dates) as DICOM JSON; NULL for JPEG/PNG'
)
USING DELTA
CLUSTER BY (image_id)
COMMENT 'Validated chest X-rays, one row per image_id'
TBLPROPERTIES (
  'delta.enableChangeDataFeed' = 'true',
  'delta.deletedFileRetentionDuration' = 'interval 7 days',
  'delta.logRetentionDuration' = 'interval 30 days'
);

CREATE TABLE IF NOT EXISTS ${catalog}.${silver_schema}.image_features (
  image_id STRING NOT NULL COMMENT 'Image id',
  feature_vector ARRAY<DOUBLE> COMMENT 'Model embedding (penultimate layer)',
  feature_extraction_model STRING COMMENT '<model_name>:<model_version>',
  mean_pixel_value DOUBLE COMMENT 'Mean 8-bit grayscale value, 0..255',
  std_pixel_value DOUBLE COMMENT 'Standard deviation of the 8-bit grayscale values, 0..255',
  extracted_at TIMESTAMP COMMENT 'When this row was written (UTC)',
  content_sha256 STRING COMMENT 'Hex sha256 of the file bytes'
)
USING DELTA
CLUSTER BY (image_id)
COMMENT 'Image features from the Rust core, one row per image_id'
TBLPROPERTIES (
  'delta.enableChangeDataFeed' = 'true',
  'delta.deletedFileRetentionDuration' = 'interval 7 days',
  'delta.logRetentionDuration' = 'interval 30 days'
);

CREATE TABLE IF NOT EXISTS ${catalog}.${silver_schema}.quarantine (
  image_id STRING NOT NULL COMMENT 'Image id',
  filename STRING COMMENT 'File name',
  file_path STRING COMMENT 'Path of the file at ingestion',
  dataset_split STRING COMMENT 'train, val, test or fullres',
  category STRING COMMENT 'Label from the folder, NULL when unlabelled',
  file_size_bytes BIGINT COMMENT 'Size of the file in bytes',
  content_sha256 STRING COMMENT 'Hex sha256 of the file bytes; NULL when unreadable',
  stage STRING COMMENT 'listing (not a regular file) or silver (decode / validation)',
  reason STRING COMMENT 'Why, e.g. truncated JPEG, image 40x40 smaller than 64 px minimum',
  source_batch_id STRING COMMENT 'bronze ingestion_batch_id of the source row',
  quarantined_at TIMESTAMP COMMENT 'When this row was written (UTC)'
)
USING DELTA
CLUSTER BY (image_id)
COMMENT 'Files that failed decoding or validation, with the reason; one row per image_id'
TBLPROPERTIES (
  'delta.enableChangeDataFeed' = 'true',
  'delta.deletedFileRetentionDuration' = 'interval 7 days',
  'delta.logRetentionDuration' = 'interval 30 days'
);
