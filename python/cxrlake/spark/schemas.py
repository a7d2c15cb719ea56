"""Spark schemas of the medallion tables, derived from the Arrow schemas of
`cxrlake.medallion.schemas` (the single source of truth): never redefine a column here."""

from __future__ import annotations

import pyarrow as pa
from pyspark.sql import types as T

from cxrlake.medallion import schemas

BINARY_FILE_SCHEMA = T.StructType(
    [
        T.StructField("path", T.StringType(), True),
        T.StructField("modificationTime", T.TimestampType(), True),
        T.StructField("length", T.LongType(), True),
        T.StructField("content", T.BinaryType(), True),
    ]
)
"""Schema of Spark's ``binaryFile`` source (and of Auto Loader with ``cloudFiles.format``
``binaryFile``)."""


def spark_type(arrow_type: pa.DataType) -> T.DataType:
    """The Spark SQL type of an Arrow type used by the lakehouse schemas.

    Mapping (as documented in `cxrlake.medallion.schemas`): string -> STRING, int32 -> INT,
    int64 -> BIGINT, float32 -> FLOAT, float64 -> DOUBLE, bool -> BOOLEAN, binary -> BINARY,
    timestamp with a time zone -> TIMESTAMP, date32 -> DATE, list<x> -> ARRAY<x>,
    struct -> STRUCT.
    """
    t = pa.types
    if t.is_string(arrow_type) or t.is_large_string(arrow_type):
        return T.StringType()
    if t.is_int32(arrow_type):
        return T.IntegerType()
    if t.is_int64(arrow_type):
        return T.LongType()
    if t.is_float64(arrow_type):
        return T.DoubleType()
    if t.is_float32(arrow_type):
        return T.FloatType()
    if t.is_boolean(arrow_type):
        return T.BooleanType()
    if t.is_binary(arrow_type) or t.is_large_binary(arrow_type):
        return T.BinaryType()
    if t.is_timestamp(arrow_type) and arrow_type.tz is not None:
        return T.TimestampType()
    if t.is_date32(arrow_type):
        return T.DateType()
    if t.is_list(arrow_type) or t.is_large_list(arrow_type):
        item = arrow_type.value_field
        return T.ArrayType(spark_type(item.type), containsNull=item.nullable)
    if t.is_struct(arrow_type):
        return to_spark_schema(pa.schema(list(arrow_type)))
    raise TypeError(f"no Spark type for Arrow type {arrow_type} in the lakehouse mapping")


def to_spark_schema(arrow_schema: pa.Schema) -> T.StructType:
    """The Spark schema of an Arrow schema: same names, order, types and nullability."""
    return T.StructType(
        [T.StructField(f.name, spark_type(f.type), f.nullable) for f in arrow_schema]
    )


def ddl(arrow_schema: pa.Schema) -> str:
    """Column list of ``CREATE TABLE`` for an Arrow schema (``image_id STRING NOT NULL, ...``)."""
    return ", ".join(
        f"{f.name} {spark_type(f.type).simpleString().upper()}{'' if f.nullable else ' NOT NULL'}"
        for f in arrow_schema
    )


BRONZE = to_spark_schema(schemas.BRONZE_METADATA)
SILVER_METADATA = to_spark_schema(schemas.SILVER_METADATA)
SILVER_FEATURES = to_spark_schema(schemas.SILVER_FEATURES)
SILVER_QUARANTINE = to_spark_schema(schemas.SILVER_QUARANTINE)
GOLD_PREDICTIONS = to_spark_schema(schemas.GOLD_PREDICTIONS)
GOLD_PERFORMANCE = to_spark_schema(schemas.GOLD_PERFORMANCE)

TABLE_SCHEMAS: dict[str, T.StructType] = {
    spec.qualified_name: to_spark_schema(spec.arrow_schema) for spec in schemas.TABLES
}
"""Spark schema of every lakehouse table by ``<schema>.<table>``."""
