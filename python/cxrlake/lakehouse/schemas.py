"""The local engine's view of the medallion schemas: `cxrlake.medallion.schemas`, re-exported.

The tables are defined once, in `cxrlake.medallion.schemas`; this module keeps the local
lakehouse's import path working.
"""

from __future__ import annotations

from cxrlake.medallion.schemas import (  # noqa: F401 - re-exports
    BRONZE,
    BRONZE_METADATA,
    CATALOG_PREFIX,
    DATASET_SUMMARY_SQL,
    DATASET_SUMMARY_VIEW,
    FEATURES,
    GOLD_PERFORMANCE,
    GOLD_PREDICTIONS,
    HEATMAP,
    LABEL_NAMES,
    PERFORMANCE,
    PREDICTIONS,
    QUARANTINE,
    QUARANTINE_MIN_SIDE_PX,
    SILVER,
    SILVER_FEATURES,
    SILVER_METADATA,
    SILVER_QUARANTINE,
    TABLE_PROPERTIES,
    TABLES,
    TS,
    TableSpec,
    catalog_path,
    validate_env,
)
