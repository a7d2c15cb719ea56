"""The Arrow columns the core's kernels return, written once.

`cxrlake.predict`, `cxrlake.features`, `cxrlake.analyze` and `cxrlake.explain` return record
batches with these schemas (built by the Rust kernels in ``src/core/kernels/``;
``tests/python/test_columns.py`` checks that both agree). Everything that names the kernels'
output types takes them from here: the Spark SQL functions (`cxrlake.spark.udfs`), the DuckDB
SQL functions (`cxrlake.lakehouse.sql`), the medallion analysis (`cxrlake.medallion.analysis`)
and the gold ``heatmap`` column (`cxrlake.medallion.schemas`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias, TypedDict

import pyarrow as pa

__all__ = ["ANALYZE", "EXPLAIN", "FEATURES", "HEATMAP", "PREDICT", "Heatmap", "Row"]

Row: TypeAlias = dict[str, Any]
"""One row of a batch or table as Python reads it (pyarrow's ``to_pylist``, a SQL cursor):
column name -> value. The values' types are the columns' (the schemas here and in
`cxrlake.medallion.schemas`), which Python's type checker cannot see: this is the boundary."""

HEATMAP = pa.struct(
    [
        pa.field("rows", pa.int32()),
        pa.field("cols", pa.int32()),
        pa.field("values", pa.list_(pa.float32())),  # row-major logit contributions
    ]
)
"""The class-activation map: ``rows x cols`` values, row-major from the top-left of the upright
image (`cxrlake.analyze`, `cxrlake.explain`)."""


class Heatmap(TypedDict):
    """One `HEATMAP` value as Python reads it (``to_pylist``): ``rows`` x ``cols`` cells and their
    ``values``, row-major."""

    rows: int
    cols: int
    values: Sequence[float]


PREDICT = pa.schema(
    [
        pa.field("probability", pa.float64()),
        pa.field("predicted_label", pa.int32()),
        pa.field("label_name", pa.string()),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("ood_score", pa.float64()),
        pa.field("out_of_distribution", pa.bool_()),
        pa.field("ood_reason", pa.string()),
        pa.field("error", pa.string()),
    ]
)
"""Columns of `cxrlake.predict` (without ``threshold=``)."""

FEATURES = pa.schema(
    [
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("mean_pixel_value", pa.float64()),
        pa.field("std_pixel_value", pa.float64()),
        pa.field("quality_score", pa.float64()),
        pa.field("embedding", pa.list_(pa.float64())),
        pa.field("error", pa.string()),
    ]
)
"""Columns of `cxrlake.features`."""

ANALYZE = pa.schema(
    [
        *list(FEATURES)[:-1],
        *list(PREDICT)[:-1],
        pa.field("heatmap", HEATMAP),
        pa.field("error", pa.string()),
    ]
)
"""Columns of `cxrlake.analyze`: those of `features` and `predict` from one pass, and the map."""

EXPLAIN = pa.schema(
    [
        pa.field("heatmap", HEATMAP),
        pa.field("heatmap_scale", pa.float64()),
        pa.field("probability", pa.float64()),
        pa.field("predicted_label", pa.int32()),
        pa.field("overlay", pa.binary()),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("ood_score", pa.float64()),
        pa.field("out_of_distribution", pa.bool_()),
        pa.field("ood_reason", pa.string()),
        pa.field("error", pa.string()),
    ]
)
"""Columns of `cxrlake.explain`."""
