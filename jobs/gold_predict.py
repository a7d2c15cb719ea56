# Databricks notebook source
# MAGIC %md
# MAGIC # cxrlake: gold predict
# MAGIC
# MAGIC Scores the silver images that have no prediction of this model version for their current
# MAGIC bytes (Rust core + ONNX model through `mapInArrow`), MERGEs
# MAGIC `gold.pneumonia_predictions` on `(image_id, model_name, model_version)`, and adds the
# MAGIC `gold.model_performance` rows (accuracy, precision, recall, F1, ROC AUC, confusion matrix per
# MAGIC labelled split) whose prediction set changed. Job: `bundle/resources/gold_predict.job.yml`.
# MAGIC
# MAGIC ## Widgets
# MAGIC - `catalog`: Unity Catalog catalog, `healthcare_catalog_<env>`.
# MAGIC - `model`: `.onnx` model, readable on the workers (e.g. a `/Volumes/...` path); empty = the model shipped in the wheel.

# COMMAND ----------

dbutils.widgets.text("catalog", "healthcare_catalog_dev", "Catalog")
dbutils.widgets.text("model", "", "Model (.onnx path, empty = shipped)")

# COMMAND ----------

from cxrlake.spark import jobs

catalog = jobs.validate_catalog(dbutils.widgets.get("catalog"))
model = jobs.validate_model(dbutils.widgets.get("model"))

# COMMAND ----------

result = jobs.predict_gold(spark, catalog=catalog, model=model)
print(result)
