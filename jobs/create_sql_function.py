# Databricks notebook source
# MAGIC %md
# MAGIC # cxrlake: SQL predict function for SQL warehouses
# MAGIC
# MAGIC Copies the cxrlake wheel that `bundle deploy` uploaded into `/Volumes/<catalog>/models/libraries`
# MAGIC and runs `sql/30_predict_function.sql`: `models.predict_image(content BINARY)`, a batch Unity
# MAGIC Catalog Python UDF with the wheel as its `ENVIRONMENT` dependency, and
# MAGIC `bronze.predict(path STRING)`, which scores the bytes bronze keeps for that path (UC Python
# MAGIC UDFs cannot read files). Then, in a SQL warehouse:
# MAGIC `SELECT file_path, bronze.predict(file_path) FROM <catalog>.bronze.kaggle_xray_metadata`.
# MAGIC Job: `bundle/resources/setup.job.yml`.
# MAGIC
# MAGIC ## Widgets
# MAGIC - `catalog`: Unity Catalog catalog, `healthcare_catalog_<env>`.
# MAGIC - `wheel_glob`: where the deployed wheel is, `<artifact_path>/.internal/cxrlake-*.whl` (newest match wins).
# MAGIC - `readers_group`: principal granted EXECUTE on both functions.

# COMMAND ----------

dbutils.widgets.text("catalog", "healthcare_catalog_dev", "Catalog")
dbutils.widgets.text("wheel_glob", "", "Deployed wheel (glob)")
dbutils.widgets.text("readers_group", "cxrlake-readers", "Readers group")

# COMMAND ----------

from pathlib import Path

from cxrlake.spark import jobs

catalog = jobs.validate_catalog(dbutils.widgets.get("catalog"))
wheel_glob = dbutils.widgets.get("wheel_glob").strip()
readers_group = jobs.validate_principal(dbutils.widgets.get("readers_group"))
sql_dir = Path.cwd().parent / "sql"  # the bundle syncs sql/ next to jobs/

# COMMAND ----------

wheel_path = jobs.create_sql_functions(
    spark, catalog=catalog, wheel_glob=wheel_glob, readers_group=readers_group, sql_dir=sql_dir
)
print(f"{catalog}.models.predict_image and {catalog}.bronze.predict use {wheel_path}")
