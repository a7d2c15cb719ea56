# Databricks notebook source
# MAGIC %md
# MAGIC # cxrlake: create tables
# MAGIC
# MAGIC Runs the DDL in `sql/` (the bronze / silver / gold tables with Change Data Feed and liquid
# MAGIC clustering, the gold views) in the schemas the bundle deployed. Idempotent. The catalog must
# MAGIC exist (`sql/00_catalog.sql`, a metastore admin) and the schemas (`bundle deploy`).
# MAGIC Job: `bundle/resources/setup.job.yml`.
# MAGIC
# MAGIC ## Widgets
# MAGIC - `catalog`: Unity Catalog catalog, `healthcare_catalog_<env>`.
# MAGIC - `bronze_schema`: the bronze schema as the bundle deployed it (`dev_<user>_bronze` in development mode).
# MAGIC - `silver_schema`: the silver schema as deployed.
# MAGIC - `gold_schema`: the gold schema as deployed.
# MAGIC - `models_schema`: the models schema as deployed.

# COMMAND ----------

dbutils.widgets.text("catalog", "healthcare_catalog_dev", "Catalog")
dbutils.widgets.text("bronze_schema", "", "Bronze schema (as deployed)")
dbutils.widgets.text("silver_schema", "", "Silver schema (as deployed)")
dbutils.widgets.text("gold_schema", "", "Gold schema (as deployed)")
dbutils.widgets.text("models_schema", "", "Models schema (as deployed)")

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
sql_dir = Path.cwd().parent / "sql"  # the bundle syncs sql/ next to jobs/

# COMMAND ----------

statements = jobs.create_tables(spark, catalog=names, sql_dir=sql_dir)
print(f"{statements} DDL statements run in {names.catalog}")
