"""Local lakehouse: bronze -> silver -> gold Delta tables (delta-rs), SQL (DuckDB), report.

Public entry points: `run_pipeline` (``cxrlake pipeline run``), `connect` / `query`
(``cxrlake sql``), `write_report` (``cxrlake report``) and `maintain` (``cxrlake maintain``).
Table names and schemas live in `cxrlake.medallion.schemas`; the batch transforms shared with
Spark in `cxrlake.medallion.transforms`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run_pipeline": "cxrlake.lakehouse.pipeline",
    "RunSummary": "cxrlake.lakehouse.run_summary",
    "connect": "cxrlake.lakehouse.sql",
    "query": "cxrlake.lakehouse.sql",
    "write_report": "cxrlake.lakehouse.report",
    "maintain": "cxrlake.lakehouse.maintain",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # lazy: `import cxrlake.lakehouse.storage` must not import DuckDB
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cxrlake.lakehouse' has no attribute {name!r}")
