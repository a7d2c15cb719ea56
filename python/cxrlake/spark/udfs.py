"""``predict``, ``features``, ``analyze`` and ``explain`` as Spark SQL functions, on the Rust core.

    from cxrlake.spark import register
    register(spark)                      # shipped model; or register(spark, model="/Volumes/...")
    spark.sql("SELECT path, predict(path) FROM images")       # path STRING or content BINARY
    spark.sql("SELECT features(content).quality_score FROM images")
    spark.sql("SELECT explain(content).heatmap FROM images")  # class-activation map

Whole Arrow batches cross into the core (no per-row Python): ``arrow_udf`` on Spark >= 4.1; on
Spark 3.5 / DBR 15.4 LTS an iterator ``pandas_udf`` (Arrow underneath, one conversion more).
The model is loaded once per Python worker and kept in this module (`_MODELS`); Spark reuses its
Python workers across tasks (``spark.python.worker.reuse``, on by default), so a job loads it once
per worker, not per batch.

Paths may be local paths, ``/Volumes/...`` (FUSE on Databricks) or ``file:``/``dbfs:`` URIs as
Spark's ``binaryFile`` source writes them; URIs are turned into paths before the core opens them.
"""

# No `from __future__ import annotations`: arrow_udf / pandas_udf read the UDF type from the
# evaluated type hints of the nested functions below.
import os
import re
from collections.abc import Callable, Iterator
from typing import Literal, Protocol, Union, overload

import pyarrow as pa
from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F

from cxrlake import columns
from cxrlake._api import analyze, explain, features, predict
from cxrlake.exceptions import InvalidArgumentError
from cxrlake.model import Model
from cxrlake.spark.schemas import spark_type

ModelLike = Union[Model, str, "os.PathLike[str]", None]
"""A model argument: None (the shipped model), a path readable on the executors, or a `Model`
(its path is used)."""
SparkUdf = Callable[..., Column]
"""A UDF as ``arrow_udf`` / ``pandas_udf`` return it."""


class _Series(Protocol):
    """The part of a pandas Series the Spark 3.5 UDF uses."""

    def tolist(self) -> list[object]: ...


PREDICT_RESULT = pa.struct(columns.PREDICT)
"""Struct returned by ``predict``: the columns of `cxrlake.predict`."""

FEATURES_RESULT = pa.struct(columns.FEATURES)
"""Struct returned by ``features``: the columns of `cxrlake.features`."""

ANALYZE_RESULT = pa.struct(columns.ANALYZE)
"""Struct returned by ``analyze``: the columns of `cxrlake.analyze`."""

EXPLAIN_RESULT = pa.struct(columns.EXPLAIN)
"""Struct returned by ``explain``: the columns of `cxrlake.explain`."""

ARROW_RECORDS_PER_BATCH = 64
"""Images per Arrow batch sent to a Python worker (Spark's default, 10 000 rows, would be
gigabytes of full-resolution X-rays)."""

MAX_PARTITION_BYTES = "32m"
"""``spark.sql.files.maxPartitionBytes`` for ``binaryFile`` reads: spreads images over tasks."""

_MODELS: dict[str | None, Model] = {}
"""Models loaded in this Python worker, by path (None = the shipped model)."""

_URI = re.compile(r"^(?:file|dbfs):(?://)?(/.*)$")


def model_for(path: str | None) -> Model:
    """The `cxrlake.Model` at ``path`` (None = shipped model), loaded once per process."""
    model = _MODELS.get(path)
    if model is None:
        model = _MODELS[path] = Model(path)
    return model


@overload
def local_path(path: str) -> str: ...


@overload
def local_path(path: None) -> None: ...


def local_path(path: str | None) -> str | None:
    """``file:/x`` or ``dbfs:/Volumes/x`` -> ``/x``, ``/Volumes/x``; other strings unchanged."""
    if path is None:
        return None
    m = _URI.match(path)
    return m.group(1) if m else path


def _images(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Arrow input of the core: paths with URIs turned into local paths, bytes as they are."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return pa.array([local_path(p) for p in values.to_pylist()], type=pa.string())
    if pa.types.is_string_view(values.type):
        return _images(values.cast(pa.string()))
    return values


def _as_struct(batch: pa.RecordBatch, struct_type: pa.StructType) -> pa.StructArray:
    columns = [batch.column(f.name).cast(f.type) for f in struct_type]
    return pa.StructArray.from_arrays(columns, fields=list(struct_type))


def predict_array(
    values: pa.Array | pa.ChunkedArray, model_path: str | None, threads: int | None
) -> pa.StructArray:
    """Score one Arrow array of paths or image bytes: a `PREDICT_RESULT` struct per row."""
    batch = predict(_images(values), model=model_for(model_path), threads=threads)
    return _as_struct(batch, PREDICT_RESULT)


def features_array(
    values: pa.Array | pa.ChunkedArray, model_path: str | None, threads: int | None
) -> pa.StructArray:
    """Features of one Arrow array of paths or image bytes: a `FEATURES_RESULT` struct per row."""
    model = model_for(model_path)
    batch = features(_images(values), model=model, threads=threads, embedding=model.has_embedding)
    return _as_struct(batch, FEATURES_RESULT)


def analyze_array(
    values: pa.Array | pa.ChunkedArray, model_path: str | None, threads: int | None
) -> pa.StructArray:
    """`cxrlake.analyze` of one Arrow array of paths or image bytes: an `ANALYZE_RESULT` struct
    per row (statistics, embedding, prediction and heatmap from one forward pass)."""
    batch = analyze(_images(values), model=model_for(model_path), threads=threads)
    return _as_struct(batch, ANALYZE_RESULT)


def explain_array(
    values: pa.Array | pa.ChunkedArray,
    model_path: str | None,
    threads: int | None,
    overlay_size: int | None = None,
) -> pa.StructArray:
    """`cxrlake.explain` of one Arrow array of paths or image bytes: an `EXPLAIN_RESULT` struct
    per row (the map, and an overlay PNG when ``overlay_size`` is set)."""
    batch = explain(
        _images(values), model=model_for(model_path), threads=threads, overlay_size=overlay_size
    )
    return _as_struct(batch, EXPLAIN_RESULT)


def _pandas_to_arrow(series: _Series) -> pa.Array:
    values = series.tolist()
    first = next((v for v in values if v is not None), None)
    if isinstance(first, (bytes, bytearray, memoryview)):
        blobs = [
            bytes(v) if isinstance(v, (bytes, bytearray, memoryview)) else None for v in values
        ]
        return pa.array(blobs, type=pa.binary())
    return pa.array(values, type=pa.string())


def _spark_ddl(struct_type: pa.StructType) -> str:
    return spark_type(struct_type).simpleString()


def arrow_udf_supported() -> bool:
    """True on Spark >= 4.1, which has ``pyspark.sql.functions.arrow_udf``."""
    return hasattr(F, "arrow_udf")


ArrayKernel = Callable[[pa.Array | pa.ChunkedArray, str | None, int | None], pa.StructArray]
"""A kernel of `make_udf`: Arrow values, model path, threads -> a result struct per row."""
_KINDS: dict[str, tuple[ArrayKernel, pa.StructType]] = {
    "predict": (predict_array, PREDICT_RESULT),
    "features": (features_array, FEATURES_RESULT),
    "analyze": (analyze_array, ANALYZE_RESULT),
    "explain": (explain_array, EXPLAIN_RESULT),
}


def make_udf(
    kind: Literal["predict", "features", "analyze", "explain"],
    model: ModelLike = None,
    threads: int | None = None,
    flavor: Literal["auto", "arrow", "pandas"] = "auto",
    overlay_size: int | None = None,
) -> SparkUdf:
    """A Spark UDF computing ``predict``, ``features``, ``analyze`` or ``explain`` over a path or
    image-bytes column.

    ``model``: None (shipped model), a path readable on the executors, or a `cxrlake.Model`
    (its path is used). ``threads``: Rust threads per Python worker (None: environment
    ``CXRLAKE_NUM_THREADS`` / ``RAYON_NUM_THREADS`` / CPUs). ``flavor``: ``arrow`` (Spark >= 4.1),
    ``pandas`` (Spark 3.5) or ``auto``. ``overlay_size`` (``explain`` only): overlay PNG side.
    """
    _check_arguments(kind=kind, threads=threads, flavor=flavor)
    model_path = model_path_of(model)
    compute: ArrayKernel = _KINDS[kind][0]
    result = _KINDS[kind][1]
    if kind == "explain":

        def explain_with_overlay(
            values: pa.Array | pa.ChunkedArray, path: str | None, n: int | None
        ) -> pa.StructArray:
            return explain_array(values, path, n, overlay_size)

        compute = explain_with_overlay

    ddl = _spark_ddl(result)
    if flavor == "auto":
        flavor = "arrow" if arrow_udf_supported() else "pandas"
    if flavor == "arrow":
        arrow_udf: Callable[..., SparkUdf] = F.arrow_udf

        def arrow_fn(batches: Iterator[pa.Array]) -> Iterator[pa.Array]:
            for values in batches:
                yield compute(values, model_path, threads)

        return arrow_udf(arrow_fn, ddl)
    if flavor == "pandas":
        import pandas as pd  # only Spark 3.5 takes this path; pandas comes with its pyspark

        def pandas_fn(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
            for series in batches:
                struct = compute(_pandas_to_arrow(series), model_path, threads)
                yield pa.RecordBatch.from_struct_array(struct).to_pandas()

        pandas_udf: Callable[..., SparkUdf] = F.pandas_udf
        return pandas_udf(pandas_fn, ddl)
    raise ValueError(f"unknown UDF flavor {flavor!r}: use 'auto', 'arrow' or 'pandas'")


_SQL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_arguments(**arguments: object) -> None:
    """Refuse bad arguments at registration, on the driver, with the accepted values named:
    otherwise they would only surface as failed tasks on the executors."""
    for key, value in arguments.items():
        if key == "kind" and value not in _KINDS:
            raise InvalidArgumentError(f"kind must be one of {sorted(_KINDS)}, got {value!r}")
        if key == "flavor" and value not in ("auto", "arrow", "pandas"):
            raise InvalidArgumentError(
                f"unknown UDF flavor {value!r}: use 'auto', 'arrow' or 'pandas'"
            )
        if (
            key in ("threads", "overlay_size")
            and value is not None
            and (isinstance(value, bool) or not isinstance(value, int) or value < 1)
        ):
            raise InvalidArgumentError(f"{key} must be a positive integer or None, got {value!r}")
        if key.endswith("name") and not (isinstance(value, str) and _SQL_NAME.match(value)):
            raise InvalidArgumentError(
                f"{key} must be a SQL identifier (letters, digits, _), got {value!r}"
            )


def model_path_of(model: ModelLike) -> str | None:
    """The path a model argument names (None: the shipped model)."""
    if model is None:
        return None
    path = getattr(model, "path", model)
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(
            f"model must be None, a path or a cxrlake.Model, got {type(model).__name__}"
        )
    return os.fspath(path)


def register(
    spark: SparkSession,
    model: ModelLike = None,
    name: str = "predict",
    features_name: str = "features",
    threads: int | None = None,
    flavor: Literal["auto", "arrow", "pandas"] = "auto",
    analyze_name: str = "analyze",
    explain_name: str = "explain",
    overlay_size: int | None = None,
) -> dict[str, SparkUdf]:
    """Register ``predict``, ``features``, ``analyze`` and ``explain`` as SQL functions of
    ``spark``; return the UDFs.

    ``predict(images)`` -> STRUCT<probability DOUBLE, predicted_label INT, label_name STRING,
    model_name STRING, model_version STRING, ood_score DOUBLE, out_of_distribution BOOLEAN,
    ood_reason STRING, error STRING>; ``features(images)`` ->
    STRUCT<width INT, height INT, mean_pixel_value DOUBLE, std_pixel_value DOUBLE,
    quality_score DOUBLE, embedding ARRAY<DOUBLE>, error STRING>; ``analyze(images)`` -> both
    plus ``heatmap STRUCT<rows INT, cols INT, values ARRAY<FLOAT>>`` from one forward pass;
    ``explain(images)`` -> STRUCT<heatmap ..., heatmap_scale DOUBLE, probability DOUBLE,
    predicted_label INT, overlay BINARY (PNG when ``overlay_size`` is set), model_name STRING,
    model_version STRING, error STRING>. ``images`` is a STRING (path) or BINARY (image bytes)
    column; a bad row gives NULLs and an ``error``, never a failed task. See `make_udf` for
    ``model``, ``threads`` and ``flavor``.
    """
    _check_arguments(
        name=name,
        features_name=features_name,
        analyze_name=analyze_name,
        explain_name=explain_name,
        threads=threads,
        flavor=flavor,
        overlay_size=overlay_size,
    )
    udfs = {
        name: make_udf("predict", model, threads, flavor),
        features_name: make_udf("features", model, threads, flavor),
        analyze_name: make_udf("analyze", model, threads, flavor),
        explain_name: make_udf("explain", model, threads, flavor, overlay_size),
    }
    for fn_name, udf in udfs.items():
        spark.udf.register(fn_name, udf)
    return udfs


def configure_session(
    spark: SparkSession,
    records_per_batch: int = ARROW_RECORDS_PER_BATCH,
    max_partition_bytes: str = MAX_PARTITION_BYTES,
) -> None:
    """Apply the image-workload settings to a session: small Arrow batches (images are large)
    and small file partitions for ``binaryFile`` reads. Executor threads are set per cluster
    (``spark.executorEnv.CXRLAKE_NUM_THREADS``), see docs/databricks.md."""
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(records_per_batch))
    spark.conf.set("spark.sql.files.maxPartitionBytes", max_partition_bytes)
