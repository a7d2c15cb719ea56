"""The catalog port: what an engine-neutral service needs from the tables, whichever engine holds
them (docs/architecture.md, "Layers").

A `Catalog` reads a table as Arrow, runs a rule's SQL over Arrow relations, and writes: append,
merge on the table's keys and delete, each write exactly one commit (none when there is nothing
to write), so a stage of a service is one commit per table it changes. Callers serialise writers
(the lakehouse lock locally). Adapters: `cxrlake.lakehouse.catalog.LocalCatalog` (delta-rs and
DuckDB), `cxrlake.spark.catalog.SparkCatalog` (Delta on Spark, Unity Catalog names) and
`cxrlake.review.warehouse.WarehouseCatalog` (a Databricks SQL warehouse). Services over it: the
site thresholds of `cxrlake.calibration_service` (`stored_versions`, `store_calibration`), the
review store (`cxrlake.review.service.CatalogReviewStore`) and the site films of
`cxrlake.calibration`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, TypeAlias

import pyarrow as pa

from cxrlake.medallion.schemas import TableSpec

Filter = Mapping[str, object]
"""Rows whose every named column equals the value, or is one of the values when that is a list,
tuple, set or Arrow array (``{"image_id": ids, "model_version": "1.1.0"}``)."""


@dataclass(frozen=True)
class TableRef:
    """A relation of `Catalog.query` that names a table (some of its columns) instead of holding
    its rows: the adapter reads it where the rule runs, so on Spark the rule reads the Delta
    table itself and nothing but the answer reaches the driver."""

    spec: TableSpec
    columns: tuple[str, ...] | None = None


Relation: TypeAlias = "pa.Table | TableRef"
"""A named input of a rule: rows in hand (Arrow) or a table of the catalog (`TableRef`)."""


class Catalog(Protocol):
    """The tables of one catalog (``healthcare_catalog_<env>``), on one engine."""

    engine: str

    def exists(self, spec: TableSpec) -> bool:
        """Whether the table exists."""
        ...

    def columns(self, spec: TableSpec) -> list[str]:
        """The column names the stored table has (a table of an earlier version may lack some
        of ``spec``'s nullable columns until `ensure` adds them)."""
        ...

    def ensure(self, spec: TableSpec, properties: Mapping[str, str] | None = None) -> None:
        """Create the table when absent (the medallion table properties plus ``properties``),
        else add the nullable columns of ``spec`` it lacks."""
        ...

    def read(
        self,
        spec: TableSpec,
        columns: list[str] | None = None,
        filter: Filter | None = None,
    ) -> pa.Table:
        """(Some columns of) the table's current version as Arrow in ``spec``'s types; an absent
        table reads as empty. ``filter``: see `Filter`."""
        ...

    def query(self, sql: str, relations: Mapping[str, Relation]) -> pa.Table:
        """Run one rule's SQL (a `cxrlake.medallion.rules` statement) over named relations
        (Arrow tables, or `TableRef`s the adapter reads itself); the answer as Arrow."""
        ...

    def append(self, spec: TableSpec, data: pa.Table, *, operation: str) -> int:
        """Append rows in one commit; rows written (no commit when empty)."""
        ...

    def merge(self, spec: TableSpec, data: pa.Table, *, operation: str) -> int:
        """Upsert rows on ``spec.keys`` (update all columns, insert the others) in one commit;
        rows inserted or updated (no commit when empty)."""
        ...

    def delete(self, spec: TableSpec, filter: Filter, *, operation: str) -> int:
        """Delete the rows ``filter`` selects (see `Filter`; an empty list selects none) in one
        commit; rows deleted (no commit when none matches)."""
        ...


def materialize(catalog: Catalog, relations: Mapping[str, Relation]) -> dict[str, pa.Table]:
    """The relations as Arrow: each `TableRef` read through ``catalog`` (for adapters whose
    rules run over Arrow in this process)."""
    return {
        name: catalog.read(r.spec, list(r.columns) if r.columns else None)
        if isinstance(r, TableRef)
        else r
        for name, r in relations.items()
    }


__all__ = ["Relation", "TableRef", "materialize", "Catalog", "Filter"]
