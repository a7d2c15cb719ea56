# Databricks notebook source
# MAGIC %md
# MAGIC # cxrlake: grant the review app its tables
# MAGIC
# MAGIC Grants the review app's service principal `SELECT` on the tables it reads and `SELECT, MODIFY`
# MAGIC on the review tables it writes (`sql/14_review_app_grants.sql`). Runs in the setup job after
# MAGIC `create_tables`: the tables do not exist when `bundle deploy` creates the app, so the app's
# MAGIC bundle resources name only the warehouse and the libraries volume. Idempotent.
# MAGIC Job: `bundle/resources/setup.job.yml`.
# MAGIC
# MAGIC ## Widgets
# MAGIC - `catalog`: Unity Catalog catalog, `healthcare_catalog_<env>`.
# MAGIC - `bronze_schema`: the bronze schema as the bundle deployed it (`dev_<user>_bronze` in development mode).
# MAGIC - `silver_schema`: the silver schema as deployed.
# MAGIC - `gold_schema`: the gold schema as deployed.
# MAGIC - `models_schema`: the models schema as deployed.
# MAGIC - `review_app_principal`: the app's service principal application ID (`${resources.apps.review.service_principal_client_id}`).

# COMMAND ----------

dbutils.widgets.text("catalog", "healthcare_catalog_dev", "Catalog")
dbutils.widgets.text("bronze_schema", "", "Bronze schema (as deployed)")
dbutils.widgets.text("silver_schema", "", "Silver schema (as deployed)")
dbutils.widgets.text("gold_schema", "", "Gold schema (as deployed)")
dbutils.widgets.text("models_schema", "", "Models schema (as deployed)")
dbutils.widgets.text("review_app_principal", "", "Review app service principal (application ID)")

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

statements = jobs.grant_review_app(
    spark, catalog=names, app_principal=dbutils.widgets.get("review_app_principal"), sql_dir=sql_dir
)
print(f"{statements} grants to the review app in {names.catalog}")
