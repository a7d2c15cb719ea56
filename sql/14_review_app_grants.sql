-- The review app's table rights (bundle/resources/review.app.yml). The app runs every query as its
-- own service principal. An app resource must name an object that exists when the bundle
-- deploys, and these tables exist only once the setup job has run 10-13_*.sql; so the setup job's
-- grant_review_app task grants them here, and the bundle grants the principal only USE SCHEMA
-- (schemas) and READ VOLUME (libraries), objects the deploy itself creates.
-- Least privilege: SELECT on the four tables the worklist and the image viewer read (bronze bytes
-- included: the app shows radiologists the images), SELECT and MODIFY on the three review tables
-- it writes (MERGE reads its target). Nothing else in bronze; who may use the app is the app's
-- own permission (radiologists only, bundle/databricks.yml).
-- Parameters: ${catalog}, ${bronze_schema}, ${silver_schema}, ${gold_schema} (as deployed) and
-- ${app_principal} (the app's service principal application ID,
-- resources.apps.review.service_principal_client_id in the bundle).

GRANT SELECT ON TABLE ${catalog}.${bronze_schema}.kaggle_xray_metadata TO `${app_principal}`;
GRANT SELECT ON TABLE ${catalog}.${silver_schema}.xray_metadata TO `${app_principal}`;
GRANT SELECT ON TABLE ${catalog}.${gold_schema}.pneumonia_predictions TO `${app_principal}`;
GRANT SELECT ON TABLE ${catalog}.${gold_schema}.model_performance TO `${app_principal}`;
GRANT SELECT, MODIFY ON TABLE ${catalog}.${gold_schema}.prediction_feedback TO `${app_principal}`;
GRANT SELECT, MODIFY ON TABLE ${catalog}.${silver_schema}.label_history TO `${app_principal}`;
GRANT SELECT, MODIFY ON TABLE ${catalog}.${gold_schema}.review_agreement TO `${app_principal}`;
