-- SQL functions so that SQL warehouses can score images:
--
--   USE CATALOG healthcare_catalog_dev;
--   SELECT file_path, bronze.predict(file_path) FROM bronze.kaggle_xray_metadata LIMIT 5;
--   -- or, after USE healthcare_catalog_dev.bronze:  SELECT predict(file_path) FROM kaggle_xray_metadata
--
-- Unity Catalog Python UDFs run in an isolated sandbox without access to the file system
-- (volumes included), so they cannot open a path. The design (docs/databricks.md):
--   * models.predict_image(content BINARY): a batch Python UDF (PARAMETER STYLE PANDAS) that scores
--     image bytes with the Rust core; the cxrlake wheel (model inside) is its ENVIRONMENT
--     dependency, installed from the models.libraries volume;
--   * bronze.predict(path STRING): a SQL function that looks the bytes of `path` up in
--     bronze.kaggle_xray_metadata (bronze keeps the bytes in Delta: column `content`, latest
--     version of the file) and calls models.predict_image. A path never ingested into bronze
--     returns error 'image not ingested: ...'.
-- Both return the same struct as cxrlake.predict and the Spark `predict` of cxrlake.spark.
-- Parameters: ${catalog}; ${wheel_path} (the wheel in /Volumes/<catalog>/models/libraries/);
-- ${readers_group} (principal granted EXECUTE). Rendered and validated by cxrlake.spark.sql_files.

CREATE OR REPLACE FUNCTION ${catalog}.models.predict_image(content BINARY)
RETURNS STRUCT<probability: DOUBLE, predicted_label: INT, label_name: STRING, model_name: STRING, model_version: STRING, error: STRING>
LANGUAGE PYTHON
DETERMINISTIC
PARAMETER STYLE PANDAS
HANDLER 'predict_handler'
ENVIRONMENT (
  dependencies = '["${wheel_path}"]',
  environment_version = 'None'
)
COMMENT 'Pneumonia probability of chest X-ray image bytes (cxrlake Rust core + shipped ONNX model)'
AS $$
from cxrlake.spark.warehouse_udf import predict_handler
$$;

CREATE OR REPLACE FUNCTION ${catalog}.bronze.predict(path STRING)
RETURNS STRUCT<probability: DOUBLE, predicted_label: INT, label_name: STRING, model_name: STRING, model_version: STRING, error: STRING>
LANGUAGE SQL
NOT DETERMINISTIC
READS SQL DATA
COMMENT 'Pneumonia prediction of an ingested X-ray by its path (bytes from bronze.kaggle_xray_metadata)'
RETURN ${catalog}.models.predict_image((
  SELECT max_by(b.content, b.ingested_at)
  FROM ${catalog}.bronze.kaggle_xray_metadata AS b
  WHERE b.file_path = predict.path
));

GRANT EXECUTE ON FUNCTION ${catalog}.models.predict_image TO `${readers_group}`;
GRANT EXECUTE ON FUNCTION ${catalog}.bronze.predict TO `${readers_group}`;
