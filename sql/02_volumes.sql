-- Managed volumes: the X-ray landing zone (Auto Loader source), streaming checkpoints, and the
-- cxrlake wheel that the SQL predict function installs. Idempotent.
-- Parameters: ${catalog}.

CREATE VOLUME IF NOT EXISTS ${catalog}.bronze.xray_images
COMMENT 'Landing zone of the X-ray files (<split>/<NORMAL|PNEUMONIA>/<file>)';

CREATE VOLUME IF NOT EXISTS ${catalog}.bronze.checkpoints
COMMENT 'Structured Streaming checkpoints and Auto Loader state of the ingestion jobs';

CREATE VOLUME IF NOT EXISTS ${catalog}.models.libraries
COMMENT 'The cxrlake wheel installed by the SQL predict function (ENVIRONMENT dependency)';
