# Databricks notebook source
# MAGIC %md
# MAGIC # cxrlake: silver transform
# MAGIC
# MAGIC Decodes and validates the bronze images that silver does not hold yet (new image or new
# MAGIC bytes) with the Rust core through `mapInArrow` (`cxrlake.spark.transforms.to_silver`, the
# MAGIC same code as the local pipeline), then MERGEs `silver.xray_metadata`, `silver.image_features`
# MAGIC and `silver.quarantine` on `image_id`. Images that fail decoding or validation are
# MAGIC quarantined with the reason; the job does not fail on them. DICOM metadata reaches silver
# MAGIC only de-identified, with the key in the secret scope `deid_secret_scope`, key `deid-key` (or the
# MAGIC cluster's `CXRLAKE_DEID_KEY`); a run with DICOM files and no key fails naming both.
# MAGIC Job: `bundle/resources/silver_transform.job.yml`.
# MAGIC
# MAGIC ## Widgets
# MAGIC - `catalog`: Unity Catalog catalog, `healthcare_catalog_<env>`.
# MAGIC - `bronze_schema`: the bronze schema as the bundle deployed it (`dev_<user>_bronze` in development mode).
# MAGIC - `silver_schema`: the silver schema as deployed.
# MAGIC - `gold_schema`: the gold schema as deployed.
# MAGIC - `models_schema`: the models schema as deployed.
# MAGIC - `registered_model`: the registered model's name as the bundle deployed it (`${resources.registered_models.pneumonia_classifier.name}`: `dev_<user>_pneumonia_classifier` in development mode).
# MAGIC - `deid_secret_scope`: the secret scope of this environment holding the DICOM de-identification key `deid-key` (`cxrlake-<env>`).
# MAGIC - `model`: `.onnx` model, readable on the workers (e.g. a `/Volumes/...` path); empty = `<catalog>.<models_schema>.<registered_model>@champion` when it is registered, else the model shipped in the wheel: the same resolution as the gold job (`cxrlake.spark.model_source.job_model`), so both score with one model version.

# COMMAND ----------

dbutils.widgets.text("catalog", "healthcare_catalog_dev", "Catalog")
dbutils.widgets.text("bronze_schema", "", "Bronze schema (as deployed)")
dbutils.widgets.text("silver_schema", "", "Silver schema (as deployed)")
dbutils.widgets.text("gold_schema", "", "Gold schema (as deployed)")
dbutils.widgets.text("models_schema", "", "Models schema (as deployed)")
dbutils.widgets.text("registered_model", "", "Registered model (as deployed)")
dbutils.widgets.text("deid_secret_scope", "", "Secret scope of the de-identification key")
dbutils.widgets.text("model", "", "Model (.onnx path, empty = shipped)")

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

# DICOM metadata is de-identified with the key in the secret <deid_secret_scope>/deid-key (or the
# cluster's CXRLAKE_DEID_KEY); runs without DICOM files need none.
result = jobs.transform_silver(spark, catalog=names, model=model, dbutils=dbutils)
print(result)
