"""Handler of the Unity Catalog batch Python UDF ``models.predict_image(content BINARY)``.

``sql/30_predict_function.sql`` creates the function with ``PARAMETER STYLE PANDAS`` and
``HANDLER 'predict_handler'``, the cxrlake wheel as its ``ENVIRONMENT`` dependency. UC Python UDFs
run in an isolated sandbox without file-system access, so the function scores image *bytes*
(kept in ``bronze.kaggle_xray_metadata.content``); the SQL function ``bronze.predict(path)``
looks the bytes up by path. No pyspark here: the sandbox has pandas and the wheel only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

NOT_INGESTED = "image not ingested: no bytes in bronze.kaggle_xray_metadata for this path"
"""Error of a row whose input is NULL (``bronze.predict`` of a path bronze does not hold)."""

_MODEL: list[Any] = []  # the shipped model, loaded once per sandbox process


def _model() -> Any:
    if not _MODEL:
        import cxrlake

        _MODEL.append(cxrlake.Model())
    return _MODEL[0]


def predict_frame(contents: Any) -> Any:
    """Score a pandas Series of image bytes (None allowed); return a DataFrame with the columns
    of `cxrlake.predict` (the UDF's STRUCT fields), one row per input row, same order."""
    import cxrlake

    values = [None if v is None else bytes(v) for v in contents.tolist()]
    result = cxrlake.predict(pa.array(values, type=pa.binary()), model=_model())
    frame = result.to_pandas()
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        frame.loc[missing, "error"] = NOT_INGESTED
    frame.index = contents.index
    return frame


def predict_handler(batches: Iterator[Any]) -> Iterator[Any]:
    """``PARAMETER STYLE PANDAS`` handler: an iterator of pandas Series (or 1-tuples of Series)
    of image bytes in, an iterator of DataFrames (STRUCT result) out."""
    for batch in batches:
        series = batch[0] if isinstance(batch, tuple) else batch
        yield predict_frame(series)
