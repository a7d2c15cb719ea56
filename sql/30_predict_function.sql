-- SQL functions so that SQL warehouses can score images (docs/databricks.md):
--
--   SELECT file_path, <catalog>.<models>.predict_image(content).probability
--   FROM <catalog>.<bronze>.kaggle_xray_metadata LIMIT 5;          -- bytes read in the same scan
--   SELECT * FROM <catalog>.<bronze>.predict('/Volumes/<catalog>/<bronze>/xray_images/test/NORMAL/x.jpeg');
--
-- <bronze> and <models> are the schema names the bundle deploys in the target (prefixed
-- dev_<user>_ in development mode).
--
-- Unity Catalog Python UDFs run in an isolated sandbox without file-system access (volumes
-- included), so they cannot open a path:
--   * models.predict_image_json(content BINARY) RETURNS STRING: a batch Python UDF (PARAMETER
--     STYLE PANDAS, HANDLER) over image bytes, with the cxrlake wheel (model inside) as its
--     ENVIRONMENT dependency, installed from the models.libraries volume
--     (https://docs.databricks.com/aws/en/udf/python-batch-udf,
--      https://docs.databricks.com/aws/en/udf/unity-catalog#extend-udfs-using-custom-dependencies).
--     It returns a scalar, one JSON object per row: the documented handler yields pandas Series of
--     scalars, and Spark's pandas-UDF serializer refuses a Series of dicts for a STRUCT.
--   * models.predict_image(content BINARY): a SQL function, from_json of that JSON with the
--     fields of cxrlake.predict: the STRUCT callers use (predict_image(content).probability)
--     (https://docs.databricks.com/aws/en/sql/language-manual/functions/from_json).
--   * bronze.predict(path STRING): a SQL *table* function returning the latest bronze version of
--     that file with its prediction. Called with a constant path, the filter reaches the scan
--     (data skipping on the clustered table) and only that file's bytes are read; a scalar
--     function with a correlated lookup would instead aggregate the bytes of every stored image.
--
-- Rights: predict_image and predict_image_json read nothing but their argument, so readers get
-- EXECUTE on both (a caller needs it on the function a SQL function calls as well). predict's
-- body reads bronze bytes, and the documentation does not say whether a SQL function body runs
-- with the definer's or the invoker's rights; so EXECUTE on it goes to the engineers only, who
-- hold SELECT on bronze either way, and readers never need SELECT on raw image bytes.
-- Parameters: ${catalog}, ${bronze_schema}, ${models_schema}; ${wheel_path} (the wheel in the
-- models.libraries volume); ${readers_group}, ${engineers_group} (principals granted EXECUTE).
-- Rendered and validated by cxrlake.spark.sql_files.

CREATE OR REPLACE FUNCTION ${catalog}.${models_schema}.predict_image_json(content BINARY)
RETURNS STRING
LANGUAGE PYTHON
DETERMINISTIC
PARAMETER STYLE PANDAS
HANDLER 'predict_handler'
ENVIRONMENT (
  dependencies = '["${wheel_path}"]',
  environment_version = 'None'
)
COMMENT 'cxrlake.predict of chest X-ray image bytes as one JSON object per row (Rust core + shipped ONNX model); call predict_image'
AS $$
from cxrlake.spark.warehouse_udf import predict_handler
$$;

CREATE OR REPLACE FUNCTION ${catalog}.${models_schema}.predict_image(content BINARY)
RETURNS STRUCT<probability: DOUBLE, predicted_label: INT, label_name: STRING, model_name: STRING, model_version: STRING, ood_score: DOUBLE, out_of_distribution: BOOLEAN, ood_reason: STRING, error: STRING>
DETERMINISTIC
COMMENT 'Pneumonia probability of chest X-ray image bytes (cxrlake Rust core + shipped ONNX model)'
RETURN from_json(
  ${catalog}.${models_schema}.predict_image_json(content),
  'probability DOUBLE, predicted_label INT, label_name STRING, model_name STRING, model_version STRING, ood_score DOUBLE, out_of_distribution BOOLEAN, ood_reason STRING, error STRING'
);

CREATE OR REPLACE FUNCTION ${catalog}.${bronze_schema}.predict(path STRING)
RETURNS TABLE (file_path STRING, image_id STRING, ingested_at TIMESTAMP, prediction STRUCT<probability: DOUBLE, predicted_label: INT, label_name: STRING, model_name: STRING, model_version: STRING, ood_score: DOUBLE, out_of_distribution: BOOLEAN, ood_reason: STRING, error: STRING>)
COMMENT 'Latest ingested version of the file at path, with its pneumonia prediction (no row: not ingested)'
RETURN SELECT b.file_path, b.image_id, b.ingested_at,
  ${catalog}.${models_schema}.predict_image(b.content) AS prediction
FROM ${catalog}.${bronze_schema}.kaggle_xray_metadata AS b
WHERE b.file_path = predict.path
QUALIFY row_number() OVER (ORDER BY b.ingested_at DESC, b.content_sha256) = 1;

GRANT EXECUTE ON FUNCTION ${catalog}.${models_schema}.predict_image_json TO `${readers_group}`;
GRANT EXECUTE ON FUNCTION ${catalog}.${models_schema}.predict_image_json TO `${engineers_group}`;
GRANT EXECUTE ON FUNCTION ${catalog}.${models_schema}.predict_image TO `${readers_group}`;
GRANT EXECUTE ON FUNCTION ${catalog}.${models_schema}.predict_image TO `${engineers_group}`;
GRANT EXECUTE ON FUNCTION ${catalog}.${bronze_schema}.predict TO `${engineers_group}`;
