"""``gold.site_thresholds`` on Spark (Unity Catalog): the site calibration service
(`cxrlake.calibration_service`) over `cxrlake.spark.catalog.SparkCatalog`, for the Databricks
jobs."""

from __future__ import annotations

from cxrlake.calibration_service import latest_site_threshold, stored_versions, validate_site_id
from cxrlake.model import Model
from cxrlake.spark.catalog import SparkCatalog
from cxrlake.threshold import SiteThreshold


def spark_site_threshold(
    catalog: SparkCatalog, site_id: str, model: Model | str | None = None
) -> SiteThreshold | None:
    """`latest_site_threshold` of ``site_id`` for ``model`` (a `Model`, a path to one, or None:
    the shipped model) in the catalog's ``gold.site_thresholds``; None when none is stored (or
    the table does not exist)."""
    site_id = validate_site_id(site_id)
    loaded = model if isinstance(model, Model) else Model(model)
    versions = stored_versions(catalog, site_id, loaded.name, loaded.version)
    return latest_site_threshold(versions, site_id, loaded.name, loaded.version)


__all__ = ["spark_site_threshold"]
