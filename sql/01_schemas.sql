-- Medallion schemas plus models (registered model, wheel volume, scoring functions), for
-- workspaces that do NOT deploy the bundle. With the bundle, never run this file: the bundle
-- creates these schemas (bundle/resources/*.schema.yml) and fails on a schema that already exists
-- and is not its own (then bind it: `databricks bundle deployment bind <key> <catalog>.<schema>`,
-- see docs/databricks.md). The setup job does not run it. Idempotent.
-- Parameters: ${catalog}, ${bronze_schema}, ${silver_schema}, ${gold_schema}, ${models_schema}.

CREATE SCHEMA IF NOT EXISTS ${catalog}.${bronze_schema}
COMMENT 'Raw chest X-ray files as ingested (bytes, path, label from the folder, sha256)';

CREATE SCHEMA IF NOT EXISTS ${catalog}.${silver_schema}
COMMENT 'Decoded, validated images (size, quality score, features) and the quarantine';

CREATE SCHEMA IF NOT EXISTS ${catalog}.${gold_schema}
COMMENT 'Pneumonia predictions, model performance per split, dataset summary';

CREATE SCHEMA IF NOT EXISTS ${catalog}.${models_schema}
COMMENT 'Registered pneumonia model, the cxrlake wheel for SQL functions, scoring UDFs';
