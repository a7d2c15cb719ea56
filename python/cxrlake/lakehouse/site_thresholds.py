"""The site threshold in force on the local lakehouse: `site_threshold` (the pipeline's gold stage
and ``cxrlake pipeline run --site``) reads ``gold.site_thresholds`` through the catalog port
(`cxrlake.lakehouse.catalog.LocalCatalog`) with the rules of `cxrlake.calibration_service`."""

from __future__ import annotations

import os

from cxrlake.calibration_service import latest_site_threshold, stored_versions, validate_site_id
from cxrlake.lakehouse.catalog import LocalCatalog
from cxrlake.model import Model
from cxrlake.threshold import SiteThreshold


def site_threshold(
    lakehouse: str | os.PathLike[str],
    site_id: str,
    model: Model | str | os.PathLike[str] | None = None,
    env: str = "dev",
) -> SiteThreshold | None:
    """The latest stored threshold of ``site_id`` for ``model`` (its name and version), or None.

    None means no calibration exists for that model version: use the shipped threshold.
    """
    model = model if isinstance(model, Model) else Model(model)
    catalog = LocalCatalog.at(lakehouse, env)
    versions = stored_versions(catalog, validate_site_id(site_id), model.name, model.version)
    return latest_site_threshold(versions, site_id, model.name, model.version)


__all__ = ["site_threshold"]
