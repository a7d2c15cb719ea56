"""Small Arrow tables into Spark and Spark DataFrames back to Arrow, on the driver, and keeping a
DataFrame computed once (what the jobs and `cxrlake.spark.catalog.SparkCatalog` share)."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from cxrlake.spark.schemas import to_spark_schema


def arrow_frame(spark: SparkSession, table: pa.Table | pa.RecordBatch) -> DataFrame:
    """A DataFrame of a small Arrow table (driver side), in the Spark types of its schema."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    schema = to_spark_schema(table.schema)
    try:
        return spark.createDataFrame(table, schema=schema)  # Spark >= 4.0 takes Arrow
    except TypeError:  # Spark 3.5
        return spark.createDataFrame(table.to_pandas(), schema=schema)


def to_arrow(df: DataFrame, arrow_schema: pa.Schema | None = None) -> pa.Table:
    """Collect a DataFrame to the driver as an Arrow table (``toArrow`` on Spark >= 4.0), in
    ``arrow_schema``'s columns and types when given."""
    collect: Callable[[], pa.Table] | None = getattr(df, "toArrow", None)  # Spark >= 4.0
    if collect is not None:
        table = collect()
    else:  # Spark 3.5: a private method, outside the typed API
        batches: Callable[[], list[pa.RecordBatch]] = getattr(df, "_collect_as_arrow")  # noqa: B009
        table = pa.Table.from_batches(batches(), arrow_schema)
    return table if arrow_schema is None else table.select(arrow_schema.names).cast(arrow_schema)


def materialise(df: DataFrame) -> DataFrame:
    """``df`` computed once and kept (``localCheckpoint``; ``cache`` where unsupported)."""
    try:
        return df.localCheckpoint()
    except Exception:  # noqa: BLE001 - e.g. a Spark Connect server without checkpoints
        return df.cache()


__all__ = ["arrow_frame", "materialise", "to_arrow"]
