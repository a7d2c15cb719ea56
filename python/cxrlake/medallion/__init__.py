"""The medallion layer, engine-neutral: what the bronze, silver and gold tables hold and why.

- `cxrlake.medallion.schemas`: table names, Arrow schemas, keys, properties.
- `cxrlake.medallion.identity`: image identity from a path, deterministic row ids.
- `cxrlake.medallion.rules`: which rows to read, insert, update and delete, as SQL that DuckDB
  and Spark SQL both run.
- `cxrlake.medallion.transforms`: Arrow batch transforms (bronze rows, one analysis pass to
  silver, features, gold and quarantine rows).
- `cxrlake.medallion.analysis`: the one decode-and-score pass over image bytes.
- `cxrlake.medallion.metrics`: ROC AUC, threshold rule, ``gold.model_performance`` rows.

Two engines adapt it and never import each other: `cxrlake.lakehouse` (local: delta-rs +
DuckDB) and `cxrlake.spark` (Databricks: Spark SQL + Delta). Importing this package loads
neither DuckDB, deltalake nor pyspark.
"""
