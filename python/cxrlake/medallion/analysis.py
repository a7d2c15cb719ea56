"""One pass over the image bytes: decode once, preprocess once, one forward pass per model.

`analyze` returns, per image, the statistics and quality score of silver, the embedding of
``silver.image_features`` and the probability (and heatmap) of gold, all from the same decode
and the same preprocessed tensor: the core's combined kernel `cxrlake.analyze`.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

ANALYSIS_SCHEMA = pa.schema(
    [
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("mean_pixel_value", pa.float64()),
        pa.field("std_pixel_value", pa.float64()),
        pa.field("quality_score", pa.float64()),
        pa.field("embedding", pa.list_(pa.float64())),
        pa.field("probability", pa.float64()),
        pa.field("predicted_label", pa.int32()),
        pa.field("label_name", pa.string()),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("ood_score", pa.float64()),
        pa.field("out_of_distribution", pa.bool_()),
        pa.field("ood_reason", pa.string()),
        pa.field(
            "heatmap",
            pa.struct(
                [
                    pa.field("rows", pa.int32()),
                    pa.field("cols", pa.int32()),
                    pa.field("values", pa.list_(pa.float32())),
                ]
            ),
        ),
        pa.field("error", pa.string()),
    ]
)
"""Columns of `analyze` (those of `cxrlake.analyze`)."""


def analyze(images: Any, model: Any, threads: int | None = None) -> pa.RecordBatch:
    """Analyze ``images`` (a binary column of image bytes) with ``model`` (a `cxrlake.Model`).

    Returns one row per image in `ANALYSIS_SCHEMA`; a bad image gives NULL values and ``error``.
    """
    import cxrlake

    out = cxrlake.analyze(images, model=model, threads=threads)
    return out.select(ANALYSIS_SCHEMA.names)
