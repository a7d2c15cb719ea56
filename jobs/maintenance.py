# Databricks notebook source
# MAGIC %md
# MAGIC # cxrlake: table maintenance
# MAGIC
# MAGIC Runs `sql/90_maintenance.sql`: `OPTIMIZE` on every lakehouse table (clusters by the liquid
# MAGIC clustering keys, `image_id` for the MERGEs), then `VACUUM ... RETAIN <retain_hours> HOURS`.
# MAGIC Job: `bundle/resources/maintenance.job.yml` (weekly).
# MAGIC
# MAGIC ## Widgets
# MAGIC - `catalog`: Unity Catalog catalog, `healthcare_catalog_<env>`.
# MAGIC - `bronze_schema`: the bronze schema as the bundle deployed it (`dev_<user>_bronze` in development mode).
# MAGIC - `silver_schema`: the silver schema as deployed.
# MAGIC - `gold_schema`: the gold schema as deployed.
# MAGIC - `models_schema`: the models schema as deployed.
# MAGIC - `retain_hours`: VACUUM retention in hours, at least 168 (one week of time travel).

# COMMAND ----------

dbutils.widgets.text("catalog", "healthcare_catalog_dev", "Catalog")
dbutils.widgets.text("bronze_schema", "", "Bronze schema (as deployed)")
dbutils.widgets.text("silver_schema", "", "Silver schema (as deployed)")
dbutils.widgets.text("gold_schema", "", "Gold schema (as deployed)")
dbutils.widgets.text("models_schema", "", "Models schema (as deployed)")
dbutils.widgets.text("retain_hours", "168", "VACUUM retention (hours, >= 168)")

# COMMAND ----------

from pathlib import Path

from cxrlake.spark import jobs

names = jobs.validate_deployment(
    dbutils.widgets.get("catalog"),
    dbutils.widgets.get("bronze_schema"),
    dbutils.widgets.get("silver_schema"),
    dbutils.widgets.get("gold_schema"),
    dbutils.widgets.get("models_schema"),
)
retain_hours = jobs.validate_retain_hours(dbutils.widgets.get("retain_hours"))
sql_dir = Path.cwd().parent / "sql"  # the bundle syncs sql/ next to jobs/

# COMMAND ----------

statements = jobs.maintain(spark, catalog=names, retain_hours=retain_hours, sql_dir=sql_dir)
print(f"{statements} maintenance statements run on {names.catalog}")
