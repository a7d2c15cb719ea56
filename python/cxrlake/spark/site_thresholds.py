"""``gold.site_thresholds`` on Spark (Unity Catalog): the read adapter of the site calibration
service (`cxrlake.calibration_service`) for the Databricks jobs."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from cxrlake.calibration_service import (
    SITE_THRESHOLDS_SCHEMA,
    latest_site_threshold,
    validate_site_id,
)
from cxrlake.model import Model
from cxrlake.threshold import SiteThreshold


def spark_site_threshold(
    spark: Any, table: str, site_id: str, model: Any = None
) -> SiteThreshold | None:
    """`latest_site_threshold` over the Unity Catalog table ``table``
    (``<catalog>.<gold schema>.site_thresholds``) for the Databricks jobs; None when absent."""
    model = model if isinstance(model, Model) else Model(model)
    if not spark.catalog.tableExists(table):
        return None
    frame = spark.table(table).where(
        (spark_col("site_id") == validate_site_id(site_id))
        & (spark_col("model_name") == model.name)
        & (spark_col("model_version") == model.version)
    )
    rows = pa.Table.from_pylist(
        [r.asDict() for r in frame.collect()], schema=SITE_THRESHOLDS_SCHEMA
    )
    return latest_site_threshold(rows, site_id, model.name, model.version)


def spark_col(name: str) -> Any:
    """``pyspark.sql.functions.col`` (pyspark imported only on Databricks paths)."""
    from pyspark.sql import functions as F  # optional extra: only the Spark paths need it

    return F.col(name)


__all__ = ["spark_col", "spark_site_threshold"]
