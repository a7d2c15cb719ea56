"""`LocalCatalog`: the catalog port (`cxrlake.catalog.Catalog`) over the local lakehouse:
tables through `cxrlake.lakehouse.storage.Lakehouse` (delta-rs), a rule's SQL through DuckDB."""

from __future__ import annotations

import os
from collections.abc import Mapping

import duckdb
import pyarrow as pa

from cxrlake.catalog import Filter, Relation, materialize
from cxrlake.lakehouse.storage import Lakehouse
from cxrlake.medallion.schemas import TableSpec


class LocalCatalog:
    """The catalog ``<root>/healthcare_catalog_<env>`` (one object per thread: the `Lakehouse`
    it holds caches DeltaTable objects)."""

    engine = "local"

    def __init__(self, lakehouse: Lakehouse) -> None:
        self.lakehouse = lakehouse

    @classmethod
    def at(cls, root: str | os.PathLike[str], env: str = "dev") -> LocalCatalog:
        return cls(Lakehouse(root, env))

    def exists(self, spec: TableSpec) -> bool:
        return self.lakehouse.exists(spec)

    def columns(self, spec: TableSpec) -> list[str]:
        return list(pa.schema(self.lakehouse.table(spec).schema().to_arrow()).names)

    def ensure(self, spec: TableSpec, properties: Mapping[str, str] | None = None) -> None:
        self.lakehouse.ensure(spec, properties)

    def read(
        self,
        spec: TableSpec,
        columns: list[str] | None = None,
        filter: Filter | None = None,
    ) -> pa.Table:
        return self.lakehouse.read(spec, columns, filter)

    def query(self, sql: str, relations: Mapping[str, Relation]) -> pa.Table:
        with duckdb.connect() as con:
            for name, table in materialize(self, relations).items():
                con.register(name, table)
            return con.sql(sql).to_arrow_table()

    def append(self, spec: TableSpec, data: pa.Table, *, operation: str) -> int:
        return self.lakehouse.append(spec, data, operation=operation)

    def merge(self, spec: TableSpec, data: pa.Table, *, operation: str) -> int:
        result = self.lakehouse.merge(spec, data, operation=operation)
        return int(result.get("num_target_rows_inserted", 0)) + int(
            result.get("num_target_rows_updated", 0)
        )

    def delete(self, spec: TableSpec, filter: Filter, *, operation: str) -> int:
        predicate = sql_predicate(spec, filter)
        # counted first: delta-rs commits a DELETE that matches no row
        if not self.exists(spec) or self.read(spec, list(filter), filter).num_rows == 0:
            return 0
        return self.lakehouse.delete_where(spec, predicate, operation=operation)


def sql_predicate(spec: TableSpec, filter: Filter) -> str:
    """A `Filter` as a delta-rs SQL predicate, each value a literal of its column's type."""
    terms = []
    for column, value in filter.items():
        kind = spec.arrow_schema.field(column).type
        if isinstance(value, (list, tuple, set, frozenset, pa.Array, pa.ChunkedArray)):
            values = value.to_pylist() if isinstance(value, (pa.Array, pa.ChunkedArray)) else value
            literals = sorted({_literal(column, kind, v) for v in values})
            terms.append(f"{column} IN ({', '.join(literals)})" if literals else "FALSE")
        else:
            terms.append(f"{column} = {_literal(column, kind, value)}")
    return " AND ".join(terms) or "TRUE"


def _literal(column: str, kind: pa.DataType, value: object) -> str:
    """A SQL literal of ``value`` for a column of Arrow type ``kind``."""
    if pa.types.is_boolean(kind) and isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if pa.types.is_integer(kind) and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if pa.types.is_floating(kind) and isinstance(value, (int, float)):
        return repr(float(value))
    if (pa.types.is_string(kind) or pa.types.is_large_string(kind)) and isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"cannot filter column {column} ({kind}) on {value!r}")


__all__ = ["LocalCatalog", "sql_predicate"]
