-- Bronze: one row per ingested file version (image_id, content_sha256), append-only; the image
-- bytes stay in `content` so that SQL warehouses can score them (see 30_predict_function.sql).
-- Columns exactly as python/cxrlake/lakehouse/schemas.py BRONZE_METADATA (checked by tests).
-- Parameters: ${catalog}, ${bronze_schema} (the schema name the bundle deploys in this target).
-- Liquid clustering on the MERGE key instead of ZORDER (Databricks recommends it for new tables:
-- https://docs.databricks.com/aws/en/delta/clustering); OPTIMIZE then clusters by it.

CREATE TABLE IF NOT EXISTS ${catalog}.${bronze_schema}.kaggle_xray_metadata (
  image_id STRING NOT NULL COMMENT 'Stable id of the image (from its path relative to the source)',
  filename STRING COMMENT 'File name',
  category STRING COMMENT 'NORMAL or PNEUMONIA from the folder; NULL when unlabelled',
  dataset_split STRING COMMENT 'train, val, test or fullres, from the folder',
  file_path STRING COMMENT 'Path of the file at ingestion (/Volumes/... on Databricks)',
  file_size_bytes BIGINT COMMENT 'Size of the file in bytes',
  ingested_at TIMESTAMP COMMENT 'When this row was written (UTC)',
  ingestion_batch_id STRING COMMENT 'Ingestion batch (Auto Loader micro-batch / local run)',
  content_sha256 STRING COMMENT 'Hex sha256 of the file bytes',
  source_modified_at TIMESTAMP COMMENT 'File modification time at ingestion (UTC)',
  content BINARY COMMENT 'The image bytes',
  dicom_metadata STRING COMMENT 'DICOM files only: the header as DICOM JSON (PS3.18 F.2), no pixel data; holds protected health information; NULL for JPEG/PNG'
)
USING DELTA
CLUSTER BY (image_id)
COMMENT 'Raw chest X-ray files (Kermany et al., CC BY 4.0), one row per file version'
TBLPROPERTIES (
  'delta.enableChangeDataFeed' = 'true',
  'delta.deletedFileRetentionDuration' = 'interval 7 days',
  'delta.logRetentionDuration' = 'interval 30 days'
);
