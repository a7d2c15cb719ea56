# Databricks notebook source
# MAGIC %md
# MAGIC # cxrlake: SQL predict function for SQL warehouses
# MAGIC
# MAGIC Copies the cxrlake wheel that `bundle deploy` uploaded into `/Volumes/<catalog>/<models_schema>/libraries`
# MAGIC and runs `sql/30_predict_function.sql`: `<models_schema>.predict_image(content BINARY)`, a batch
# MAGIC Unity Catalog Python UDF with the wheel as its `ENVIRONMENT` dependency, and the table function
# MAGIC `<bronze_schema>.predict(path STRING)`, which scores the latest bytes bronze keeps for that path
# MAGIC (UC Python UDFs cannot read files). Then, in a SQL warehouse:
# MAGIC `SELECT file_path, <catalog>.<models_schema>.predict_image(content) FROM <catalog>.<bronze_schema>.kaggle_xray_metadata LIMIT 5`.
# MAGIC Job: `bundle/resources/setup.job.yml`.
# MAGIC
# MAGIC ## Widgets
# MAGIC - `catalog`: Unity Catalog catalog, `healthcare_catalog_<env>`.
# MAGIC - `bronze_schema`: the bronze schema as the bundle deployed it (`dev_<user>_bronze` in development mode).
# MAGIC - `silver_schema`: the silver schema as deployed.
# MAGIC - `gold_schema`: the gold schema as deployed.
# MAGIC - `models_schema`: the models schema as deployed.
# MAGIC - `wheel_glob`: where the deployed wheel is, `<artifact_path>/.internal/cxrlake-*.whl` (newest match wins).
# MAGIC - `readers_group`: principal granted EXECUTE on `predict_image`.
# MAGIC - `engineers_group`: principal granted EXECUTE on both functions.

# COMMAND ----------

dbutils.widgets.text("catalog", "healthcare_catalog_dev", "Catalog")
dbutils.widgets.text("bronze_schema", "", "Bronze schema (as deployed)")
dbutils.widgets.text("silver_schema", "", "Silver schema (as deployed)")
dbutils.widgets.text("gold_schema", "", "Gold schema (as deployed)")
dbutils.widgets.text("models_schema", "", "Models schema (as deployed)")
dbutils.widgets.text("wheel_glob", "", "Deployed wheel (glob)")
dbutils.widgets.text("readers_group", "", "Readers group")
dbutils.widgets.text("engineers_group", "", "Engineers group")

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
wheel_glob = dbutils.widgets.get("wheel_glob").strip()
readers_group = jobs.validate_principal(dbutils.widgets.get("readers_group"))
engineers_group = jobs.validate_principal(dbutils.widgets.get("engineers_group"))
sql_dir = Path.cwd().parent / "sql"  # the bundle syncs sql/ next to jobs/

# COMMAND ----------

wheel_path = jobs.create_sql_functions(
    spark,
    catalog=names,
    wheel_glob=wheel_glob,
    readers_group=readers_group,
    engineers_group=engineers_group,
    sql_dir=sql_dir,
)
print(f"{names.catalog}.{names.models}.predict_image and {names.catalog}.{names.bronze}.predict use {wheel_path}")
