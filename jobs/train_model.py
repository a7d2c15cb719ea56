# Databricks notebook source
# MAGIC %md
# MAGIC # cxrlake: train the pneumonia model
# MAGIC
# MAGIC Fine-tunes the ImageNet EfficientNet-Lite0 on the labelled images of a volume folder laid out as
# MAGIC `<data_path>/<NORMAL|PNEUMONIA>/*.jpeg` with the same package code as `cxrlake train`
# MAGIC (`cxrlake.training.train.fit` then `finalize`) and the recipe of the shipped model
# MAGIC (`cxrlake.training.config.SHIPPED_RECIPE`: model 1.2.0 = recipe 1.0.0+longer, 80 optimizer steps):
# MAGIC the latest acquisition batches held out as validation, augmentation, class weighting, model
# MAGIC selection on the held-out batches, temperature from the validation under simulated acquisition
# MAGIC shifts, threshold = the best specificity with sensitivity >= 0.95 on the held-out batches, ONNX
# MAGIC export with the contract metadata, int8 tried and kept only if it keeps the metrics. The run is
# MAGIC logged to MLflow and the chosen ONNX model registered in Unity Catalog as
# MAGIC `<catalog>.<models_schema>.<registered_model>` with the alias `champion` and a model signature
# MAGIC (required by Unity Catalog); the gold job then scores with it.
# MAGIC Job: `bundle/resources/train_model.job.yml`. See MODEL_CARD.md for the figures of the shipped model.
# MAGIC
# MAGIC ## Widgets
# MAGIC - `catalog`: Unity Catalog catalog, `healthcare_catalog_<env>`.
# MAGIC - `bronze_schema`, `silver_schema`, `gold_schema`, `models_schema`: the schemas as the bundle deployed them (`dev_<user>_...` in development mode).
# MAGIC - `registered_model`: the registered model's name as the bundle deployed it (`${resources.registered_models.pneumonia_classifier.name}`: `dev_<user>_pneumonia_classifier` in development mode).
# MAGIC - `data_path`: volume folder with `NORMAL/` and `PNEUMONIA/`; empty = `/Volumes/<catalog>/<bronze_schema>/xray_images/train`.
# MAGIC - `epochs`: empty = the shipped recipe's step budget; an integer 1-50 = that many passes over the training split instead, with the recipe's other settings (a quick run: `make databricks-local` passes 1).
# MAGIC - `register_model`: `true` to register the model in Unity Catalog and set `champion`, `false` to only log the run.

# COMMAND ----------

dbutils.widgets.text("catalog", "healthcare_catalog_dev", "Catalog")
dbutils.widgets.text("bronze_schema", "", "Bronze schema (as deployed)")
dbutils.widgets.text("silver_schema", "", "Silver schema (as deployed)")
dbutils.widgets.text("gold_schema", "", "Gold schema (as deployed)")
dbutils.widgets.text("models_schema", "", "Models schema (as deployed)")
dbutils.widgets.text("registered_model", "", "Registered model (as deployed)")
dbutils.widgets.text("data_path", "", "Labelled images (empty = <xray_images volume>/train)")
dbutils.widgets.text("epochs", "", "Epochs (empty = the shipped recipe's step budget)")
dbutils.widgets.dropdown("register_model", "true", ["true", "false"], "Register in UC")

# COMMAND ----------

import os
import time
from pathlib import Path

from cxrlake.serving import registry
from cxrlake.spark import jobs
from cxrlake.spark.local_runtime import storage_path
from cxrlake.training.config import SHIPPED_RECIPE, recipe_config
from cxrlake.training.train import finalize, fit

names = jobs.validate_deployment(
    dbutils.widgets.get("catalog"),
    dbutils.widgets.get("bronze_schema"),
    dbutils.widgets.get("silver_schema"),
    dbutils.widgets.get("gold_schema"),
    dbutils.widgets.get("models_schema"),
    registered_model=dbutils.widgets.get("registered_model"),
)
data_path = jobs.validate_volume_path(
    "data_path",
    dbutils.widgets.get("data_path") or names.volume_path("bronze", "xray_images") + "/train",
    names.catalog,
)
epochs_text = dbutils.widgets.get("epochs").strip()
if epochs_text and not (epochs_text.isdigit() and 1 <= int(epochs_text) <= 50):
    raise ValueError(f"epochs must be empty or an integer in 1..50, got {epochs_text!r}")
register_model = dbutils.widgets.get("register_model") == "true"
model_name = names.model_name()  # <catalog>.<models schema>.<registered_model>, as deployed
# the cluster's local SSD (CXRLAKE_LOCAL_DISK: another folder, e.g. for `make databricks-local`)
run_dir = Path(os.environ.get("CXRLAKE_LOCAL_DISK", "/local_disk0")) / "cxrlake_train" / time.strftime("%Y%m%d-%H%M%S")

# COMMAND ----------

# epochs given: that many passes (evaluated once per pass) instead of the recipe's step budget
passes = {"epochs": int(epochs_text), "steps": None, "eval_every": None} if epochs_text else {}
config = recipe_config(
    SHIPPED_RECIPE, storage_path(data_path), str(run_dir), threads=min(8, os.cpu_count() or 1), **passes
)
fit(config)
summary = finalize(run_dir)
print({k: summary["validation"][k] for k in ("auc", "sensitivity", "specificity", "threshold")})

# COMMAND ----------

if register_model:
    result = registry.log_and_register(
        run_dir,
        # the workspace's MLflow and Unity Catalog registry (MLFLOW_*_URI: another, e.g. locally)
        tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or "databricks",
        registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or "databricks-uc",
        experiment=f"/Shared/cxrlake-pneumonia-{names.catalog}-{names.models}",
        name=model_name,
    )
    print(f"registered {result['model_name']} version {result['model_version']} as champion")
