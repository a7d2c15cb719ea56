"""One pass over the image bytes: decode once, preprocess once, one forward pass per model.

`analyze` returns, per image, the statistics and quality score of silver, the embedding of
``silver.image_features`` and the probability (and heatmap) of gold, all from the same decode
and the same preprocessed tensor: the core's combined kernel `cxrlake.analyze`.
"""

from __future__ import annotations

import pyarrow as pa

from cxrlake import columns
from cxrlake._api import analyze as analyze_images
from cxrlake.model import Model

ANALYSIS_SCHEMA = columns.ANALYZE
"""Columns of `analyze` (those of `cxrlake.analyze`)."""


def analyze(images: pa.Array, model: Model, threads: int | None = None) -> pa.RecordBatch:
    """Analyze ``images`` (a binary column of image bytes) with ``model`` (a `cxrlake.Model`).

    Returns one row per image in `ANALYSIS_SCHEMA`; a bad image gives NULL values and ``error``.
    """
    out = analyze_images(images, model=model, threads=threads)
    return out.select(ANALYSIS_SCHEMA.names)
