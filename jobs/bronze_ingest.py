# Databricks notebook source
# MAGIC %md
# MAGIC # cxrlake: bronze ingest
# MAGIC
# MAGIC Incrementally ingests the X-ray files of the landing volume into
# MAGIC `<catalog>.bronze.kaggle_xray_metadata` with Auto Loader (`cloudFiles.format = binaryFile`,
# MAGIC trigger `availableNow`, checkpointed). Each micro-batch is turned into bronze rows by
# MAGIC `cxrlake.spark.transforms.to_bronze` (image id, label and split from the path, sha256 of the
# MAGIC bytes, the bytes themselves) and MERGEd on `(image_id, content_sha256)`: re-runs and retried
# MAGIC batches add nothing. Job: `bundle/resources/bronze_ingest.job.yml`.
# MAGIC
# MAGIC ## Widgets
# MAGIC - `catalog`: Unity Catalog catalog, `healthcare_catalog_<env>`.
# MAGIC - `source_path`: landing volume, `/Volumes/<catalog>/bronze/xray_images` (files under `<split>/<NORMAL|PNEUMONIA>/`).
# MAGIC - `checkpoint_path`: streaming checkpoint, `/Volumes/<catalog>/bronze/checkpoints/bronze_ingest`.

# COMMAND ----------

dbutils.widgets.text("catalog", "healthcare_catalog_dev", "Catalog")
dbutils.widgets.text("source_path", "/Volumes/healthcare_catalog_dev/bronze/xray_images", "Source volume path")
dbutils.widgets.text("checkpoint_path", "/Volumes/healthcare_catalog_dev/bronze/checkpoints/bronze_ingest", "Checkpoint path")

# COMMAND ----------

from cxrlake.spark import jobs

catalog = jobs.validate_catalog(dbutils.widgets.get("catalog"))
source_path = jobs.validate_volume_path("source_path", dbutils.widgets.get("source_path"), catalog)
checkpoint_path = jobs.validate_volume_path("checkpoint_path", dbutils.widgets.get("checkpoint_path"), catalog)

# COMMAND ----------

result = jobs.ingest_bronze(spark, catalog=catalog, source_path=source_path, checkpoint_path=checkpoint_path)
print(result)
