-- Medallion schemas plus models (registered model, wheel volume, scoring functions).
-- The bundle creates the same schemas with grants (bundle/resources/*.schema.yml); this file is
-- for workspaces managed without the bundle. Idempotent.
-- Parameters: ${catalog}.

CREATE SCHEMA IF NOT EXISTS ${catalog}.bronze
COMMENT 'Raw chest X-ray files as ingested (bytes, path, label from the folder, sha256)';

CREATE SCHEMA IF NOT EXISTS ${catalog}.silver
COMMENT 'Decoded, validated images (size, quality score, features) and the quarantine';

CREATE SCHEMA IF NOT EXISTS ${catalog}.gold
COMMENT 'Pneumonia predictions, model performance per split, dataset summary';

CREATE SCHEMA IF NOT EXISTS ${catalog}.models
COMMENT 'Registered pneumonia model, the cxrlake wheel for SQL functions, scoring UDFs';
