# Databricks notebook source
# MAGIC %md
# MAGIC # cxrlake: serving comparison
# MAGIC
# MAGIC Compares the champion and the challenger of the pneumonia serving endpoint
# MAGIC (`bundle/resources/pneumonia_serving.model_serving_endpoint.yml`) from its AI Gateway inference
# MAGIC table `gold.pneumonia_serving_payload`: per model version, requests, images, errors, positive
# MAGIC rate, agreement with the other version on the same images, and sensitivity and specificity
# MAGIC against the radiologists' verdicts (`gold.prediction_feedback`), into
# MAGIC `gold.champion_challenger_comparison` (`cxrlake.spark.serving`, the rule `cxrlake promote` runs
# MAGIC locally). (Re)creates `models.predict_endpoint(content)`, the `ai_query` form of predict
# MAGIC (`sql/40_predict_endpoint_function.sql`). With `promote_version`, prints the comparison and
# MAGIC then moves `@champion` of the registered model to that version. Job:
# MAGIC `bundle/resources/serving_comparison.job.yml`.
# MAGIC
# MAGIC ## Widgets
# MAGIC - `catalog`: Unity Catalog catalog, `healthcare_catalog_<env>`.
# MAGIC - `bronze_schema`: the bronze schema as the bundle deployed it (`dev_<user>_bronze` in development mode).
# MAGIC - `silver_schema`: the silver schema as deployed.
# MAGIC - `gold_schema`: the gold schema as deployed (the inference table and the comparison live there).
# MAGIC - `models_schema`: the models schema as deployed (the registered model and `predict_endpoint`).
# MAGIC - `registered_model`: the registered model's deployed name.
# MAGIC - `serving_endpoint`: the endpoint's deployed name, called by `predict_endpoint`.
# MAGIC - `readers_group`: principal granted EXECUTE on `predict_endpoint`.
# MAGIC - `engineers_group`: principal granted EXECUTE on `predict_endpoint`.
# MAGIC - `promote_version`: empty = compare only; a version number = move `@champion` to it after printing the comparison.

# COMMAND ----------

dbutils.widgets.text("catalog", "healthcare_catalog_dev", "Catalog")
dbutils.widgets.text("bronze_schema", "", "Bronze schema (as deployed)")
dbutils.widgets.text("silver_schema", "", "Silver schema (as deployed)")
dbutils.widgets.text("gold_schema", "", "Gold schema (as deployed)")
dbutils.widgets.text("models_schema", "", "Models schema (as deployed)")
dbutils.widgets.text("registered_model", "", "Registered model (as deployed)")
dbutils.widgets.text("serving_endpoint", "", "Serving endpoint (as deployed)")
dbutils.widgets.text("readers_group", "", "Readers group")
dbutils.widgets.text("engineers_group", "", "Engineers group")
dbutils.widgets.text("promote_version", "", "Version to make the champion (empty = none)")

# COMMAND ----------

from cxrlake.spark import jobs

names = jobs.validate_deployment(
    dbutils.widgets.get("catalog"),
    dbutils.widgets.get("bronze_schema"),
    dbutils.widgets.get("silver_schema"),
    dbutils.widgets.get("gold_schema"),
    dbutils.widgets.get("models_schema"),
    registered_model=dbutils.widgets.get("registered_model"),
)

# COMMAND ----------

report = jobs.serving_comparison(
    spark,
    names,
    serving_endpoint=dbutils.widgets.get("serving_endpoint"),
    readers_group=dbutils.widgets.get("readers_group"),
    engineers_group=dbutils.widgets.get("engineers_group") or None,
    promote_version=dbutils.widgets.get("promote_version").strip() or None,
)
print(report)
