# Databricks notebook source
# MAGIC %md
# MAGIC # cxrlake: bronze ingest
# MAGIC
# MAGIC Incrementally ingests the X-ray files of the landing volume into
# MAGIC `<catalog>.<bronze_schema>.kaggle_xray_metadata` with Auto Loader (`cloudFiles.format = binaryFile`,
# MAGIC trigger `availableNow`, checkpointed). Each micro-batch is turned into bronze rows by
# MAGIC `cxrlake.spark.transforms.to_bronze` (image id, label and split from the path, sha256 of the
# MAGIC bytes, the bytes themselves) and MERGEd on `(image_id, content_sha256)`: re-runs and retried
# MAGIC batches add nothing. Job: `bundle/resources/bronze_ingest.job.yml`.
# MAGIC
# MAGIC ## Widgets
# MAGIC - `catalog`: Unity Catalog catalog, `healthcare_catalog_<env>`.
# MAGIC - `bronze_schema`: the bronze schema as the bundle deployed it (`dev_<user>_bronze` in development mode).
# MAGIC - `silver_schema`: the silver schema as deployed.
# MAGIC - `gold_schema`: the gold schema as deployed.
# MAGIC - `models_schema`: the models schema as deployed.
# MAGIC - `source_path`: landing volume, `/Volumes/<catalog>/<bronze_schema>/xray_images` (files under `<split>/<NORMAL|PNEUMONIA>/`); empty = that volume.
# MAGIC - `checkpoint_path`: streaming checkpoint, `/Volumes/<catalog>/<bronze_schema>/checkpoints/bronze_ingest`; empty = that path.

# COMMAND ----------

dbutils.widgets.text("catalog", "healthcare_catalog_dev", "Catalog")
dbutils.widgets.text("bronze_schema", "", "Bronze schema (as deployed)")
dbutils.widgets.text("silver_schema", "", "Silver schema (as deployed)")
dbutils.widgets.text("gold_schema", "", "Gold schema (as deployed)")
dbutils.widgets.text("models_schema", "", "Models schema (as deployed)")
dbutils.widgets.text("source_path", "", "Source volume path (empty = the xray_images volume)")
dbutils.widgets.text("checkpoint_path", "", "Checkpoint path (empty = the checkpoints volume)")

# COMMAND ----------

from cxrlake.spark import jobs

names = jobs.validate_deployment(
    dbutils.widgets.get("catalog"),
    dbutils.widgets.get("bronze_schema"),
    dbutils.widgets.get("silver_schema"),
    dbutils.widgets.get("gold_schema"),
    dbutils.widgets.get("models_schema"),
)
source_path = jobs.validate_volume_path(
    "source_path", dbutils.widgets.get("source_path") or names.volume_path("bronze", "xray_images"), names.catalog
)
checkpoint_path = jobs.validate_volume_path(
    "checkpoint_path",
    dbutils.widgets.get("checkpoint_path") or names.volume_path("bronze", "checkpoints") + "/bronze_ingest",
    names.catalog,
)

# COMMAND ----------

result = jobs.ingest_bronze(spark, catalog=names, source_path=source_path, checkpoint_path=checkpoint_path)
print(result)
