# Databricks notebook source
# MAGIC %md
# MAGIC # cxrlake: gold predict
# MAGIC
# MAGIC Scores with the registered champion model when there is one (`cxrlake.spark.model_source`),
# MAGIC else the shipped model; every prediction row records the model name and version that scored it.
# MAGIC Scores the silver images that have no prediction of this model version for their current
# MAGIC bytes (Rust core + ONNX model through `mapInArrow`), MERGEs
# MAGIC `gold.pneumonia_predictions` on `(image_id, model_name, model_version)`, and adds the
# MAGIC `gold.model_performance` rows (accuracy, precision, recall, F1, ROC AUC, confusion matrix per
# MAGIC labelled split) whose prediction set changed. Job: `bundle/resources/gold_predict.job.yml`.
# MAGIC
# MAGIC ## Widgets
# MAGIC - `catalog`: Unity Catalog catalog, `healthcare_catalog_<env>`.
# MAGIC - `bronze_schema`: the bronze schema as the bundle deployed it (`dev_<user>_bronze` in development mode).
# MAGIC - `silver_schema`: the silver schema as deployed.
# MAGIC - `gold_schema`: the gold schema as deployed.
# MAGIC - `models_schema`: the models schema as deployed.
# MAGIC - `registered_model`: the registered model's name as the bundle deployed it (`${resources.registered_models.pneumonia_classifier.name}`: `dev_<user>_pneumonia_classifier` in development mode).
# MAGIC - `deid_secret_scope`: the secret scope of this environment holding the DICOM de-identification key `deid-key` (`cxrlake-<env>`).
# MAGIC - `model`: `.onnx` model, readable on the workers (e.g. a `/Volumes/...` path); empty = `<catalog>.<models_schema>.<registered_model>@champion` when it is registered (copied to the models libraries volume with its registry name and version in the metadata), else the model shipped in the wheel.
# MAGIC - `site`: site id; labels are then decided by that site's latest threshold for this model version in `gold.site_thresholds` (written by `cxrlake calibrate`), and every prediction records it in `decision_threshold` / `threshold_source`; empty = the model's own threshold.

# COMMAND ----------

dbutils.widgets.text("catalog", "healthcare_catalog_dev", "Catalog")
dbutils.widgets.text("bronze_schema", "", "Bronze schema (as deployed)")
dbutils.widgets.text("silver_schema", "", "Silver schema (as deployed)")
dbutils.widgets.text("gold_schema", "", "Gold schema (as deployed)")
dbutils.widgets.text("models_schema", "", "Models schema (as deployed)")
dbutils.widgets.text("registered_model", "", "Registered model (as deployed)")
dbutils.widgets.text("deid_secret_scope", "", "Secret scope of the de-identification key")
dbutils.widgets.text("model", "", "Model (.onnx path, empty = champion or shipped)")
dbutils.widgets.text("site", "", "Site id (empty = the model threshold)")

# COMMAND ----------

from cxrlake.spark import jobs, model_source

names = jobs.validate_deployment(
    dbutils.widgets.get("catalog"),
    dbutils.widgets.get("bronze_schema"),
    dbutils.widgets.get("silver_schema"),
    dbutils.widgets.get("gold_schema"),
    dbutils.widgets.get("models_schema"),
    registered_model=dbutils.widgets.get("registered_model"),
    deid_secret_scope=dbutils.widgets.get("deid_secret_scope"),
)
# the one model resolution of silver and gold: model parameter, else @champion, else shipped
source = model_source.job_model(names, jobs.validate_model(dbutils.widgets.get("model")))
print(source.reason)
model = source.path  # None: the shipped model

# COMMAND ----------

result = jobs.predict_gold(
    spark,
    catalog=names,
    model=model,
    site=dbutils.widgets.get("site") or None,
    dbutils=dbutils,  # reads the DICOM de-identification key (secret <deid_secret_scope>/deid-key)
)
print(result)
