"""``gold.site_thresholds`` in the local lakehouse (delta-rs): the storage adapter of the site
calibration service (`cxrlake.calibration_service`). Reads the versions of a site's threshold,
gives the one in force (`site_threshold`, used by the pipeline's gold stage) and appends a new
version in one Delta commit (an identical re-run writes nothing)."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import replace

import pyarrow as pa
from deltalake import DeltaTable

from cxrlake.calibration_service import (
    SITE_THRESHOLDS_SCHEMA,
    CalibrationResult,
    latest_site_threshold,
    next_version,
    site_threshold_row,
    site_thresholds_spec,
    validate_site_id,
    versions_of,
)
from cxrlake.lakehouse.storage import Lakehouse, commit_properties
from cxrlake.medallion import schemas
from cxrlake.model import Model
from cxrlake.threshold import SiteThreshold


def stored_versions(lake: Lakehouse, site_id: str, model_name: str, model_version: str) -> pa.Table:
    """Every stored version of a site's threshold for one model, oldest first."""
    spec = site_thresholds_spec()
    if not DeltaTable.is_deltatable(lake.path(spec)):
        return SITE_THRESHOLDS_SCHEMA.empty_table()
    rows = DeltaTable(lake.path(spec)).to_pyarrow_table()
    return versions_of(rows, site_id, model_name, model_version)


def site_threshold(
    lakehouse: str | os.PathLike,
    site_id: str,
    model: Model | str | os.PathLike | None = None,
    env: str = "dev",
) -> SiteThreshold | None:
    """The latest stored threshold of ``site_id`` for ``model`` (its name and version), or None.

    None means no calibration exists for that model version: use the shipped threshold.
    """
    model = model if isinstance(model, Model) else Model(model)
    lake = Lakehouse(lakehouse, env)
    versions = stored_versions(lake, validate_site_id(site_id), model.name, model.version)
    return latest_site_threshold(versions, site_id, model.name, model.version)


def ensure_table(lake: Lakehouse) -> None:
    """Create ``gold.site_thresholds`` when it does not exist yet."""
    spec = site_thresholds_spec()
    if not DeltaTable.is_deltatable(lake.path(spec)):
        os.makedirs(lake.path(spec), exist_ok=True)
        DeltaTable.create(
            lake.path(spec),
            SITE_THRESHOLDS_SCHEMA,
            mode="ignore",
            name=spec.name,
            description=f"cxrlake {spec.qualified_name}",
            configuration=schemas.TABLE_PROPERTIES,
            commit_properties=commit_properties(operation="create"),
        )


def store_calibration(
    lake: Lakehouse, result: CalibrationResult, splits: list[str] | None
) -> CalibrationResult:
    """Append ``result`` as the next version of its site's threshold (the caller holds the
    lakehouse lock); an identical calibration already stored as the last version is not written
    again. Returns ``result`` with its version and whether it was stored now."""
    ensure_table(lake)
    versions = stored_versions(lake, result.site_id, result.model_name, result.model_version)
    version, new = next_version(versions, result.calibration_id)
    if not new:
        return replace(result, version=version, stored=False)
    row = site_threshold_row(result, version, splits, dt.datetime.now(dt.timezone.utc))
    lake.append(
        site_thresholds_spec(),
        pa.Table.from_pylist([row], schema=SITE_THRESHOLDS_SCHEMA),
        operation="calibrate",
    )
    return replace(result, version=version, stored=True)


__all__ = ["ensure_table", "site_threshold", "store_calibration", "stored_versions"]
