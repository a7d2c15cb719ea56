"""`SparkCatalog`: the catalog port (`cxrlake.catalog.Catalog`) on Spark: Delta tables under
their Unity Catalog three-level names (``<catalog>.<deployed schema>.<table>``, from a
`cxrlake.spark.deployment.Deployment`), read to Arrow with ``toArrow``, a rule's SQL run by Spark
SQL over Arrow relations registered as temporary views, and each write one Delta statement
(``INSERT``, ``MERGE``, ``MERGE ... DELETE``), so one Delta commit, none when there is nothing to
write. The Databricks jobs (`cxrlake.spark.jobs`) write their DataFrames through the same object
(`merge_frame`, `update_frame`, `delete_frame`).

Open-source Delta refuses a subquery in a ``DELETE`` condition (DELTA_UNSUPPORTED_SUBQUERY), so
deletes are ``MERGE ... WHEN MATCHED THEN DELETE``, which Databricks runs too.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cxrlake.catalog import Filter, Relation, TableRef
from cxrlake.medallion import schemas
from cxrlake.medallion.schemas import TableSpec
from cxrlake.spark.deployment import Deployment
from cxrlake.spark.frames import arrow_frame, to_arrow
from cxrlake.spark.schemas import to_spark_schema

USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"
"""Session conf whose value Delta records in the commit (``userMetadata``): the operation."""

Statement = Callable[[str, str], str]
"""A statement over a target table and a source view name."""


def merge_statement(target: str, source: str, keys: tuple[str, ...], update: bool) -> str:
    """``MERGE INTO target USING source`` on ``keys`` (NULL-safe): insert new rows, and update
    matched rows when ``update`` (insert-only otherwise, as for append-only bronze)."""
    on = " AND ".join(f"t.{k} <=> s.{k}" for k in keys)
    matched = "WHEN MATCHED THEN UPDATE SET * " if update else ""
    return (
        f"MERGE INTO {target} AS t USING {source} AS s ON {on} "
        f"{matched}WHEN NOT MATCHED THEN INSERT *"
    )


def update_statement(keys: tuple[str, ...], columns: Iterable[str]) -> Statement:
    """``MERGE`` setting ``columns`` of the target rows matched on ``keys`` (nothing inserted)."""
    on = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    sets = ", ".join(f"t.{c} = s.{c}" for c in columns)

    def statement(target: str, source: str) -> str:
        return (
            f"MERGE INTO {target} AS t USING {source} AS s ON {on} "
            f"WHEN MATCHED THEN UPDATE SET {sets}"
        )

    return statement


def delete_statement(columns: tuple[str, ...]) -> Statement:
    """``MERGE ... WHEN MATCHED THEN DELETE`` of the target rows whose ``columns`` equal those
    of a row of the source."""
    on = " AND ".join(f"t.{c} = s.{c}" for c in columns)
    names = ", ".join(columns)

    def statement(target: str, source: str) -> str:
        return (
            f"MERGE INTO {target} AS t USING (SELECT DISTINCT {names} FROM {source}) AS s "
            f"ON {on} WHEN MATCHED THEN DELETE"
        )

    return statement


def spark_type_ddl(data_type: T.DataType) -> str:
    """SQL of a Spark type with the field names of structs as they are (back-quoted): keywords
    in capitals, names never (``STRUCT<`rows`: INT>``; the table's nested fields keep the
    schema's case)."""
    if isinstance(data_type, T.StructType):
        fields = ", ".join(f"`{f.name}`: {spark_type_ddl(f.dataType)}" for f in data_type.fields)
        return f"STRUCT<{fields}>"
    if isinstance(data_type, T.ArrayType):
        return f"ARRAY<{spark_type_ddl(data_type.elementType)}>"
    if isinstance(data_type, T.MapType):
        return f"MAP<{spark_type_ddl(data_type.keyType)}, {spark_type_ddl(data_type.valueType)}>"
    return data_type.simpleString().upper()


def columns_ddl(arrow_schema: pa.Schema) -> str:
    """Column list of ``CREATE TABLE`` / ``ADD COLUMNS`` (``image_id STRING NOT NULL, ...``)."""
    return ", ".join(
        f"`{f.name}` {spark_type_ddl(f.dataType)}{'' if f.nullable else ' NOT NULL'}"
        for f in to_spark_schema(arrow_schema)
    )


def add_columns_statement(target: str, spec: TableSpec, existing: Iterable[str]) -> str | None:
    """``ALTER TABLE target ADD COLUMNS (...)`` for the nullable columns of ``spec`` that a table
    with columns ``existing`` lacks (https://docs.databricks.com/aws/en/sql/language-manual/sql-ref-syntax-ddl-alter-table-manage-column);
    None when none is missing. A missing required column is an error naming it."""
    have = {c.lower() for c in existing}
    missing = [f for f in spec.arrow_schema if f.name.lower() not in have]
    if not missing:
        return None
    required = [f.name for f in missing if not f.nullable]
    if required:
        raise ValueError(
            f"{target} lacks required column(s) {', '.join(required)}: rebuild the table"
        )
    return f"ALTER TABLE {target} ADD COLUMNS ({columns_ddl(pa.schema(missing))})"


def filter_column(frame: DataFrame, filter: Filter) -> DataFrame:
    """The rows of ``frame`` a `cxrlake.catalog.Filter` selects."""
    for column, value in filter.items():
        if isinstance(value, (list, tuple, set, frozenset, pa.Array, pa.ChunkedArray)):
            values = value.to_pylist() if isinstance(value, (pa.Array, pa.ChunkedArray)) else value
            frame = frame.where(F.col(column).isin(list(values)))
        else:
            frame = frame.where(F.col(column) == F.lit(value))
    return frame


def _selects_none(value: object) -> bool:
    """Whether a `Filter` value is an empty collection (the filter then selects no row)."""
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        return len(value) == 0
    return isinstance(value, (list, tuple, set, frozenset)) and not value


class SparkCatalog:
    """The tables of one deployed catalog on a `SparkSession` (Delta, Unity Catalog names)."""

    engine = "spark"

    def __init__(self, spark: SparkSession, deployment: Deployment | str) -> None:
        self.spark = spark
        self.deployment = (
            deployment if isinstance(deployment, Deployment) else Deployment(deployment)
        )

    def name(self, spec: TableSpec) -> str:
        """``<catalog>.<deployed schema>.<table>`` of a lakehouse table."""
        return self.deployment.table(spec.qualified_name)

    def frame(self, spec: TableSpec) -> DataFrame:
        """The table's current version as a DataFrame."""
        return self.spark.table(self.name(spec))

    # ------------------------------------------------------------------ the port
    def exists(self, spec: TableSpec) -> bool:
        return bool(self.spark.catalog.tableExists(self.name(spec)))

    def columns(self, spec: TableSpec) -> list[str]:
        return list(self.frame(spec).columns)

    def ensure(self, spec: TableSpec, properties: Mapping[str, str] | None = None) -> None:
        target = self.name(spec)
        if self.exists(spec):
            statement = add_columns_statement(target, spec, self.columns(spec))
            if statement:
                self.spark.sql(statement)
            return
        props = {**schemas.TABLE_PROPERTIES, **(properties or {})}
        listed = ", ".join(f"'{k}' = '{v}'" for k, v in props.items())
        self.spark.sql(
            f"CREATE TABLE IF NOT EXISTS {target} ({columns_ddl(spec.arrow_schema)}) "
            f"USING DELTA TBLPROPERTIES ({listed})"
        )

    def read(
        self,
        spec: TableSpec,
        columns: list[str] | None = None,
        filter: Filter | None = None,
    ) -> pa.Table:
        names = columns or spec.arrow_schema.names
        schema = pa.schema([spec.arrow_schema.field(c) for c in names])
        if not self.exists(spec):
            return schema.empty_table()
        frame = filter_column(self.frame(spec), filter or {}).select(*names)
        return to_arrow(frame, schema)

    def query(self, sql: str, relations: Mapping[str, Relation]) -> pa.Table:
        for name, table in relations.items():
            if isinstance(table, TableRef):  # the Delta table itself: nothing to the driver
                frame = self.frame(table.spec)
                frame = frame.select(*table.columns) if table.columns else frame
            else:
                frame = arrow_frame(self.spark, table)
            frame.createOrReplaceTempView(name)
        try:
            return to_arrow(self.spark.sql(sql))
        finally:
            for name in relations:
                self.spark.catalog.dropTempView(name)

    def append(self, spec: TableSpec, data: pa.Table, *, operation: str) -> int:
        if data.num_rows == 0:
            return 0
        frame = arrow_frame(
            self.spark, data.select(spec.arrow_schema.names).cast(spec.arrow_schema)
        )
        columns = ", ".join(spec.arrow_schema.names)
        with self.tagged(operation):
            self._run(
                frame, lambda t, s: f"INSERT INTO {t} ({columns}) SELECT {columns} FROM {s}", spec
            )
        return data.num_rows

    def merge(self, spec: TableSpec, data: pa.Table, *, operation: str) -> int:
        if data.num_rows == 0:
            return 0
        frame = arrow_frame(
            self.spark, data.select(spec.arrow_schema.names).cast(spec.arrow_schema)
        )
        counts = self.merge_frame(spec, frame, operation=operation)
        return counts.get("num_inserted_rows", 0) + counts.get("num_updated_rows", 0)

    def delete(self, spec: TableSpec, filter: Filter, *, operation: str) -> int:
        if not self.exists(spec) or any(_selects_none(v) for v in filter.values()):
            return 0
        matched = filter_column(self.frame(spec), filter).select(*filter)
        counts = self.delete_frame(spec, matched, tuple(filter), operation=operation)
        return counts.get("num_deleted_rows", 0)

    # ------------------------------------------------------------------ DataFrames (the jobs)
    def merge_frame(
        self, spec: TableSpec, df: DataFrame, *, update: bool = True, operation: str = "merge"
    ) -> dict[str, int]:
        """MERGE ``df`` into the table on ``spec.keys`` (one row per key kept): insert new rows,
        update matched ones when ``update``. Delta's row counts; no commit when ``df`` is empty."""
        keys = spec.keys
        with self.tagged(operation):
            return self._run(
                df.dropDuplicates(list(keys)),
                lambda t, s: merge_statement(t, s, keys, update),
                spec,
            )

    def update_frame(
        self, spec: TableSpec, df: DataFrame, columns: Iterable[str], *, operation: str = "update"
    ) -> dict[str, int]:
        """Set ``columns`` of the rows matching ``df`` on ``spec.keys``; Delta's row counts."""
        with self.tagged(operation):
            return self._run(df, update_statement(spec.keys, columns), spec)

    def delete_frame(
        self,
        spec: TableSpec,
        df: DataFrame,
        columns: tuple[str, ...] = ("image_id",),
        *,
        operation: str = "delete",
    ) -> dict[str, int]:
        """Delete the rows whose ``columns`` equal a row of ``df``'s; Delta's row counts; no
        commit when ``df`` is empty."""
        with self.tagged(operation):
            return self._run(df, delete_statement(columns), spec)

    @contextmanager
    def tagged(self, operation: str) -> Iterator[None]:
        """Delta records ``operation`` as the ``userMetadata`` of the commits made inside (not
        where the session refuses to set the conf: the commits are then untagged)."""
        try:
            self.spark.conf.set(USER_METADATA, operation)
        except Exception:  # noqa: BLE001 - e.g. serverless compute allows only some confs
            yield
            return
        try:
            yield
        finally:
            self.spark.conf.unset(USER_METADATA)

    def _run(self, df: DataFrame, statement: Statement, spec: TableSpec) -> dict[str, int]:
        """One statement of ``df`` (a temporary view) into the table: Delta's row counts; none,
        and no commit, when ``df`` is empty."""
        if df.isEmpty():
            return {}
        view = f"cxrlake_change_{uuid.uuid4().hex}"
        df.createOrReplaceTempView(view)
        try:
            rows = self.spark.sql(statement(self.name(spec), view)).collect()
        finally:
            self.spark.catalog.dropTempView(view)
        metrics = rows[0].asDict() if rows else {}
        return {k: int(v) for k, v in metrics.items() if isinstance(v, int)}


__all__ = [
    "SparkCatalog",
    "add_columns_statement",
    "delete_statement",
    "merge_statement",
    "spark_type_ddl",
    "update_statement",
]
