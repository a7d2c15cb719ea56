"""Handler of the Unity Catalog batch Python UDF ``models.predict_image(content BINARY)``.

``sql/30_predict_function.sql`` creates ``models.predict_image_json(content) RETURNS STRING``
with ``PARAMETER STYLE PANDAS`` and ``HANDLER 'predict_handler'``, the cxrlake wheel as its
``ENVIRONMENT`` dependency, and the SQL function ``models.predict_image`` that parses its JSON
into the ``STRUCT`` of `cxrlake.predict`. UC Python UDFs
run in an isolated sandbox without file-system access, so the function scores image *bytes*
(kept in ``bronze.kaggle_xray_metadata.content``); the SQL table function ``bronze.predict(path)``
scores the latest bytes of one path. No pyspark here, nor the local engine's packages: the
sandbox has pandas and the wheel with its runtime dependencies (pyarrow, numpy, onnxruntime).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa

from cxrlake._api import predict
from cxrlake.model import Model

if TYPE_CHECKING:  # the sandbox has pandas; this module imports it only where it builds a Series
    import pandas as pd

NOT_INGESTED = "no image bytes (NULL input)"
"""Error of a row whose input is NULL."""

_MODEL: list[Model] = []  # the shipped model, loaded once per sandbox process


def _model() -> Model:
    if not _MODEL:
        _MODEL.append(Model())
    return _MODEL[0]


PREDICT_JSON_SCHEMA = (
    "probability DOUBLE, predicted_label INT, label_name STRING, model_name STRING, "
    "model_version STRING, ood_score DOUBLE, out_of_distribution BOOLEAN, ood_reason STRING, "
    "error STRING"
)
"""The fields of `cxrlake.predict` as a Spark DDL schema: ``from_json`` of the handler's JSON
with this schema is the ``STRUCT`` that ``models.predict_image`` returns
(sql/30_predict_function.sql)."""


def predict_json(contents: pd.Series) -> pd.Series:
    """Score a pandas Series of image bytes: a pandas Series of the same length and index whose
    values are JSON objects (``str``) with the fields of `cxrlake.predict` (``null`` for SQL NULL;
    a non-finite number becomes ``null``)."""
    import pandas as pd  # optional extra: present in the UC sandbox, not needed to import this

    values = [None if v is None else bytes(v) for v in contents.tolist()]
    records = predict(pa.array(values, type=pa.binary()), model=_model()).to_pylist()
    out = []
    for value, record in zip(values, records, strict=True):
        if value is None:
            record["error"] = NOT_INGESTED
        for field, item in record.items():
            if isinstance(item, float) and not math.isfinite(item):
                record[field] = None
        out.append(json.dumps(record, allow_nan=False))
    return pd.Series(out, index=contents.index, dtype=object)


def predict_handler(
    batches: Iterator[pd.Series | tuple[pd.Series, ...]],
) -> Iterator[pd.Series]:
    """``PARAMETER STYLE PANDAS`` handler of ``models.predict_image_json(content) RETURNS STRING``
    in the documented form: an iterator over batches of the arguments (a pandas Series, or a tuple
    of one Series per argument) in, an iterator of pandas Series of scalars out, one value per
    input row (https://docs.databricks.com/aws/en/udf/python-batch-udf, "Batch UDF handler
    function": every documented example returns a scalar type). A STRUCT result is not yielded
    here: Spark's pandas-UDF serializer takes a STRUCT only as a pandas DataFrame and refuses a
    Series of dicts, and the batch UDF page documents neither. The SQL function
    ``models.predict_image`` turns the JSON into the STRUCT with ``from_json``
    (https://docs.databricks.com/aws/en/sql/language-manual/functions/from_json)."""
    for batch in batches:
        series = batch[0] if isinstance(batch, tuple) else batch
        yield predict_json(series)
