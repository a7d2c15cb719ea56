"""`LocalCatalog`: the catalog port (`cxrlake.catalog.Catalog`) over the local lakehouse:
tables through `cxrlake.lakehouse.storage.Lakehouse` (delta-rs), a rule's SQL through DuckDB."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import duckdb
import pyarrow as pa
from deltalake import DeltaTable

from cxrlake.lakehouse.storage import Lakehouse, commit_properties
from cxrlake.medallion import schemas
from cxrlake.medallion.schemas import TableSpec


class LocalCatalog:
    """The catalog ``<root>/healthcare_catalog_<env>`` (one object per thread: the `Lakehouse`
    it holds caches DeltaTable objects)."""

    engine = "local"

    def __init__(self, lakehouse: Lakehouse) -> None:
        self.lakehouse = lakehouse

    @classmethod
    def at(cls, root: str | os.PathLike, env: str = "dev") -> LocalCatalog:
        return cls(Lakehouse(root, env))

    def exists(self, spec: TableSpec) -> bool:
        return self.lakehouse.exists(spec)

    def columns(self, spec: TableSpec) -> list[str]:
        return list(pa.schema(self.lakehouse.table(spec).schema().to_arrow()).names)

    def ensure(self, spec: TableSpec, properties: Mapping[str, str] | None = None) -> None:
        if self.lakehouse.exists(spec):
            self.lakehouse.add_columns(spec)
            return
        path = self.lakehouse.path(spec)
        os.makedirs(path, exist_ok=True)
        DeltaTable.create(
            path,
            spec.arrow_schema,
            mode="ignore",
            name=spec.name,
            description=f"cxrlake {spec.qualified_name}",
            configuration={**schemas.TABLE_PROPERTIES, **(properties or {})},
            commit_properties=commit_properties(operation="create"),
        )

    def read(
        self,
        spec: TableSpec,
        columns: list[str] | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> pa.Table:
        return self.lakehouse.read(spec, columns, filter)

    def query(self, sql: str, relations: Mapping[str, pa.Table]) -> pa.Table:
        with duckdb.connect() as con:
            for name, table in relations.items():
                con.register(name, table)
            return con.sql(sql).to_arrow_table()

    def append(self, spec: TableSpec, data: pa.Table, *, operation: str) -> int:
        return self.lakehouse.append(spec, data, operation=operation)

    def merge(self, spec: TableSpec, data: pa.Table, *, operation: str) -> int:
        result = self.lakehouse.merge(spec, data, operation=operation)
        return int(result.get("num_target_rows_inserted", 0)) + int(
            result.get("num_target_rows_updated", 0)
        )


__all__ = ["LocalCatalog"]
