# Databricks notebook source
# MAGIC %md
# MAGIC # cxrlake: table maintenance
# MAGIC
# MAGIC Runs `sql/90_maintenance.sql`: `OPTIMIZE ... ZORDER BY (image_id)` on every lakehouse table
# MAGIC (lookups and MERGEs join on `image_id`), then `VACUUM ... RETAIN <retain_hours> HOURS`.
# MAGIC Job: `bundle/resources/maintenance.job.yml` (weekly).
# MAGIC
# MAGIC ## Widgets
# MAGIC - `catalog`: Unity Catalog catalog, `healthcare_catalog_<env>`.
# MAGIC - `retain_hours`: VACUUM retention in hours, at least 168 (one week of time travel).

# COMMAND ----------

dbutils.widgets.text("catalog", "healthcare_catalog_dev", "Catalog")
dbutils.widgets.text("retain_hours", "168", "VACUUM retention (hours, >= 168)")

# COMMAND ----------

from pathlib import Path

from cxrlake.spark import jobs

catalog = jobs.validate_catalog(dbutils.widgets.get("catalog"))
retain_hours = jobs.validate_retain_hours(dbutils.widgets.get("retain_hours"))
sql_dir = Path.cwd().parent / "sql"  # the bundle syncs sql/ next to jobs/

# COMMAND ----------

statements = jobs.maintain(spark, catalog=catalog, retain_hours=retain_hours, sql_dir=sql_dir)
print(f"{statements} maintenance statements run on {catalog}")
