-- The ai_query form of predict: the same STRUCT as predict(), answered by the pneumonia Model
-- Serving endpoint (bundle/resources/pneumonia_serving.model_serving_endpoint.yml), so the
-- champion / challenger split, the endpoint's scaling and its AI Gateway inference table
-- (<gold>.pneumonia_serving_payload) apply to SQL callers too:
--
--   SELECT file_path, <catalog>.<models>.predict_endpoint(content).probability
--   FROM <catalog>.<bronze>.kaggle_xray_metadata LIMIT 5;
--
--   -- or inline, without the function:
--   SELECT ai_query('<endpoint>', named_struct('content', base64(content)),
--                   returnType => 'STRUCT<probability: DOUBLE, ...>') FROM ...
--
-- The endpoint serves a pyfunc version of the registered model (cxrlake.serving.pyfunc): input
-- column `content` = base64 image bytes, output = the predict() columns. ai_query runs on
-- serverless and pro SQL warehouses (pro: with PrivateLink), not on classic ones, and needs
-- "AI_Query for Custom Models" enabled; the caller needs CAN QUERY on the endpoint
-- (https://docs.databricks.com/en/sql/language-manual/functions/ai_query.html; docs/databricks.md).
-- Parameters: ${catalog}, ${models_schema}, ${serving_endpoint} (the endpoint's deployed name),
-- ${readers_group}, ${engineers_group}. Rendered and validated by cxrlake.spark.sql_files; run by
-- the serving_comparison job (cxrlake.spark.serving.create_endpoint_function).

CREATE OR REPLACE FUNCTION ${catalog}.${models_schema}.predict_endpoint(content BINARY)
RETURNS STRUCT<probability: DOUBLE, predicted_label: INT, label_name: STRING, model_name: STRING, model_version: STRING, error: STRING>
COMMENT 'Pneumonia prediction of chest X-ray image bytes by the serving endpoint (champion or challenger), as predict() returns it'
RETURN ai_query(
  '${serving_endpoint}',
  named_struct('content', base64(content)),
  returnType => 'STRUCT<probability: DOUBLE, predicted_label: INT, label_name: STRING, model_name: STRING, model_version: STRING, error: STRING>'
);

GRANT EXECUTE ON FUNCTION ${catalog}.${models_schema}.predict_endpoint TO `${readers_group}`;
GRANT EXECUTE ON FUNCTION ${catalog}.${models_schema}.predict_endpoint TO `${engineers_group}`;
