"""cxrlake on Spark and Databricks: SQL functions, ``mapInArrow`` transforms, job entry points.

- `register` (`cxrlake.spark.udfs`): ``predict`` / ``features`` SQL functions as Arrow-native UDFs
  (``arrow_udf`` on Spark >= 4.1, an iterator ``pandas_udf`` on Spark 3.5 / DBR 15.4 LTS).
- `cxrlake.spark.transforms`: ``mapInArrow`` functions from a ``binaryFile`` DataFrame to the
  bronze, silver and gold tables (the engine-neutral batch code of `cxrlake.medallion.transforms`,
  which the local engine runs too).
- `cxrlake.spark.schemas`: Spark schemas derived from `cxrlake.medallion.schemas`.
- `cxrlake.spark.jobs`: what the Databricks notebooks in ``jobs/`` call; `cxrlake.spark.stages`:
  the rules of `cxrlake.medallion.rules` run by Spark SQL; `cxrlake.spark.catalog.SparkCatalog`:
  the catalog port on Delta, through which every job writes (MERGE, MERGE ... DELETE).
- `cxrlake.spark.sql_files`: the ``sql/`` files (render, split, run).
- `cxrlake.spark.warehouse_udf`: the handler of the Unity Catalog batch Python UDF behind the SQL
  warehouse ``predict(path)`` (no pyspark needed there).

``warehouse_udf``, ``sql_files``, ``deployment`` and ``local_runtime`` import no pyspark, so the UC
sandbox, the review app and the SQL rendering work where it is absent.
"""

from __future__ import annotations

from typing import Any

__all__ = ["register", "configure_session"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cxrlake.spark import udfs  # lazy: udfs imports pyspark (the 'spark' extra)

        return getattr(udfs, name)
    raise AttributeError(f"module 'cxrlake.spark' has no attribute {name!r}")
