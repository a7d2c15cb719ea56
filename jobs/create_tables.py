# Databricks notebook source
# MAGIC %md
# MAGIC # cxrlake: create tables
# MAGIC
# MAGIC Runs the DDL in `sql/` (schemas, volumes, the bronze / silver / gold tables with Change Data
# MAGIC Feed on, the `gold.dataset_summary` view) inside the catalog. Idempotent. The catalog itself
# MAGIC must exist (`sql/00_catalog.sql`, run by a metastore admin).
# MAGIC Job: `bundle/resources/setup.job.yml`.
# MAGIC
# MAGIC ## Widgets
# MAGIC - `catalog`: Unity Catalog catalog, `healthcare_catalog_<env>`.

# COMMAND ----------

dbutils.widgets.text("catalog", "healthcare_catalog_dev", "Catalog")

# COMMAND ----------

from pathlib import Path

from cxrlake.spark import jobs

catalog = jobs.validate_catalog(dbutils.widgets.get("catalog"))
sql_dir = Path.cwd().parent / "sql"  # the bundle syncs sql/ next to jobs/

# COMMAND ----------

statements = jobs.create_tables(spark, catalog=catalog, sql_dir=sql_dir)
print(f"{statements} DDL statements run in {catalog}")
