-- Managed volumes: the X-ray landing zone (Auto Loader source), streaming checkpoints, and the
-- cxrlake wheel that the SQL predict function installs. Like 01_schemas.sql, only for workspaces
-- that do not deploy the bundle (bundle/resources/*.volume.yml). Idempotent.
-- Parameters: ${catalog}, ${bronze_schema}, ${models_schema}.

CREATE VOLUME IF NOT EXISTS ${catalog}.${bronze_schema}.xray_images
COMMENT 'Landing zone of the X-ray files (<split>/<NORMAL|PNEUMONIA>/<file>)';

CREATE VOLUME IF NOT EXISTS ${catalog}.${bronze_schema}.checkpoints
COMMENT 'Structured Streaming checkpoints and Auto Loader state of the ingestion jobs';

CREATE VOLUME IF NOT EXISTS ${catalog}.${models_schema}.libraries
COMMENT 'The cxrlake wheel installed by the SQL predict function (ENVIRONMENT dependency)';
