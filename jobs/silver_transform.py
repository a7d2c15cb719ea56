# Databricks notebook source
# MAGIC %md
# MAGIC # cxrlake: silver transform
# MAGIC
# MAGIC Decodes and validates the bronze images that silver does not hold yet (new image or new
# MAGIC bytes) with the Rust core through `mapInArrow` (`cxrlake.spark.transforms.to_silver`, the
# MAGIC same code as the local pipeline), then MERGEs `silver.xray_metadata`, `silver.image_features`
# MAGIC and `silver.quarantine` on `image_id`. Images that fail decoding or validation are
# MAGIC quarantined with the reason; the job does not fail on them.
# MAGIC Job: `bundle/resources/silver_transform.job.yml`.
# MAGIC
# MAGIC ## Widgets
# MAGIC - `catalog`: Unity Catalog catalog, `healthcare_catalog_<env>`.
# MAGIC - `model`: `.onnx` model for the feature vectors, readable on the workers (e.g. a `/Volumes/...` path); empty = the model shipped in the wheel.

# COMMAND ----------

dbutils.widgets.text("catalog", "healthcare_catalog_dev", "Catalog")
dbutils.widgets.text("model", "", "Model (.onnx path, empty = shipped)")

# COMMAND ----------

from cxrlake.spark import jobs

catalog = jobs.validate_catalog(dbutils.widgets.get("catalog"))
model = jobs.validate_model(dbutils.widgets.get("model"))

# COMMAND ----------

result = jobs.transform_silver(spark, catalog=catalog, model=model)
print(result)
