"""The review store on Databricks: Unity Catalog tables through a SQL warehouse.

Used by the Databricks App (``bundle/apps/review``): the same server and the same store
(`cxrlake.review.service.CatalogReviewStore`) as locally, over `WarehouseCatalog`, an adapter of
the catalog port (`cxrlake.catalog.Catalog`) that speaks SQL through ``databricks-sql-connector``
(any DB-API connection with named ``:name`` markers). Connection as in the Databricks Apps SQL
warehouse example: the app's service principal credentials from ``databricks.sdk.core.Config()``
and the warehouse id that ``valueFrom: sql-warehouse`` puts into ``DATABRICKS_WAREHOUSE_ID``
(https://docs.databricks.com/aws/en/dev-tools/databricks-apps/app-runtime).

Values always travel as named parameter markers (``:name``); identifiers (catalog and schema
names) are validated against the patterns of `cxrlake.spark.sql_files` before they are put into
statement text, and column names come from `cxrlake.medallion.schemas`. Each write is one
statement (one Delta commit); an append never adds a row whose keys the table holds (several app
instances may write). Writes are serialised per app instance; the label-history MERGE is retried
on a Delta concurrent-modification conflict with another instance.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import pyarrow as pa

from cxrlake.catalog import Filter, Relation, TableRef
from cxrlake.medallion import schemas
from cxrlake.medallion.schemas import TableSpec
from cxrlake.review import tables
from cxrlake.review.ports import Row
from cxrlake.review.service import CatalogReviewStore
from cxrlake.review.tables import ReviewError
from cxrlake.spark.sql_files import validate_parameter

HISTORY_RETRIES = 3
Params = dict[str, object]


class Cursor(AbstractContextManager["Cursor"], Protocol):
    """The DB-API cursor the store uses (``databricks.sql`` and DuckDB both fit)."""

    description: Sequence[Sequence[object]] | None

    def execute(self, operation: str, parameters: Mapping[str, object] | None = ...) -> object: ...

    def fetchall(self) -> Sequence[Sequence[object]]: ...


class Connection(Protocol):
    def cursor(self) -> Cursor: ...


class WarehouseNames:
    """Fully qualified table names from the catalog and the schema names of the target."""

    def __init__(
        self, catalog: str, bronze: str = "bronze", silver: str = "silver", gold: str = "gold"
    ) -> None:
        self.schemas = {
            "bronze": validate_parameter("bronze_schema", bronze),
            "silver": validate_parameter("silver_schema", silver),
            "gold": validate_parameter("gold_schema", gold),
        }
        self.catalog = validate_parameter("catalog", catalog)
        self.bronze = self.table(schemas.BRONZE)
        self.silver = self.table(schemas.SILVER)
        self.predictions = self.table(schemas.PREDICTIONS)
        self.performance = self.table(schemas.PERFORMANCE)
        self.feedback = self.table(tables.FEEDBACK)
        self.history = self.table(tables.HISTORY)
        self.agreement = self.table(tables.AGREEMENT)

    def table(self, spec: TableSpec) -> str:
        """``<catalog>.<deployed schema>.<table>``."""
        return f"{self.catalog}.{self.schemas[spec.schema_name]}.{spec.name}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WarehouseNames:
        env = os.environ if env is None else env
        return cls(
            env.get("CXRLAKE_CATALOG", "healthcare_catalog_dev"),
            env.get("CXRLAKE_BRONZE_SCHEMA", "bronze"),
            env.get("CXRLAKE_SILVER_SCHEMA", "silver"),
            env.get("CXRLAKE_GOLD_SCHEMA", "gold"),
        )


def connect_from_env() -> Connection:
    """A databricks-sql-connector connection with the app's credentials."""
    # optional extras: only the Databricks App installs the SQL connector
    from databricks.sdk.core import Config
    from databricks.sql import connect  # type: ignore[import-untyped, import-not-found, unused-ignore]

    cfg = Config()
    warehouse = os.environ.get("DATABRICKS_WAREHOUSE_ID")
    if not warehouse:
        raise RuntimeError("DATABRICKS_WAREHOUSE_ID is not set (app.yaml: valueFrom sql-warehouse)")
    connection: Connection = connect(
        server_hostname=cfg.host,
        http_path=f"/sql/1.0/warehouses/{warehouse}",
        credentials_provider=lambda: cfg.authenticate,
    )
    return connection


_SQL_TYPES: tuple[tuple[Callable[[pa.DataType], bool], str], ...] = (
    (pa.types.is_string, "STRING"),
    (pa.types.is_int32, "INT"),
    (pa.types.is_int64, "BIGINT"),
    (pa.types.is_float64, "DOUBLE"),
    (pa.types.is_float32, "FLOAT"),
    (pa.types.is_boolean, "BOOLEAN"),
    (pa.types.is_timestamp, "TIMESTAMP"),
    (pa.types.is_date32, "DATE"),
    (pa.types.is_binary, "BINARY"),
)


def sql_type(field: pa.Field) -> str:
    """The SQL type a value of ``field`` is cast to (the scalar types of the review tables)."""
    for matches, name in _SQL_TYPES:
        if matches(field.type):
            return name
    raise TypeError(f"column {field.name} ({field.type}) cannot travel as a SQL parameter")


def _value(value: object) -> object:
    """A parameter value: timestamps as ISO text (cast back by the statement)."""
    return value.isoformat() if isinstance(value, (dt.datetime, dt.date)) else value


def values_relation(data: pa.Table, alias: str, prefix: str = "v") -> tuple[str, Params]:
    """``(VALUES (CAST(:v0_0 AS T), ...), ...) AS alias(columns)`` holding ``data``'s rows as
    named parameters, and the parameters. ``data`` must have rows."""
    fields = list(data.schema)
    rows = []
    params: Params = {}
    for i, row in enumerate(data.to_pylist()):
        cells = []
        for j, f in enumerate(fields):
            name = f"{prefix}{i}_{j}"
            params[name] = _value(row[f.name])
            cells.append(f"CAST(:{name} AS {sql_type(f)})")
        rows.append(f"({', '.join(cells)})")
    columns = ", ".join(f.name for f in fields)
    return f"(VALUES {', '.join(rows)}) AS {alias}({columns})", params


def where_clause(filter: Filter | None) -> tuple[str, Params]:
    """`` WHERE ...`` of a `Filter`, with its values as parameters (``:f0``, ``:f1_0`` ...)."""
    terms = []
    params: Params = {}
    for i, (column, value) in enumerate((filter or {}).items()):
        if isinstance(value, (list, tuple, set, frozenset, pa.Array, pa.ChunkedArray)):
            values = value.to_pylist() if isinstance(value, (pa.Array, pa.ChunkedArray)) else value
            names = [f"f{i}_{j}" for j in range(len(values))]
            params.update({n: _value(v) for n, v in zip(names, values, strict=True)})
            markers = ", ".join(f":{n}" for n in names)
            terms.append(f"{column} IN ({markers})" if names else "FALSE")
        else:
            params[f"f{i}"] = _value(value)
            terms.append(f"{column} = :f{i}")
    return (f" WHERE {' AND '.join(terms)}" if terms else ""), params


class WarehouseCatalog:
    """The catalog port over a SQL warehouse (a DB-API connection opened on first use)."""

    engine = "databricks"

    def __init__(
        self, names: WarehouseNames, connect: Callable[[], Connection] = connect_from_env
    ) -> None:
        self.names = names
        self._connect = connect
        self._conn: Connection | None = None
        self._lock = threading.Lock()  # one connection, shared by the server's threads
        self._columns: dict[str, list[str]] = {}

    def rows(self, sql: str, params: Mapping[str, object] | None = None) -> list[Row]:
        """Run one statement; its answer as rows (none when it returns no result set)."""
        with self._lock:
            if self._conn is None:
                self._conn = self._connect()
            with self._conn.cursor() as cur:
                cur.execute(sql, dict(params or {}))
                if cur.description is None:
                    return []
                names = [str(d[0]) for d in cur.description]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def columns(self, spec: TableSpec) -> list[str]:
        """The table's columns (remembered once found: the app never drops a table)."""
        table = self.names.table(spec)
        if table not in self._columns:
            with self._lock:
                if self._conn is None:
                    self._conn = self._connect()
                with self._conn.cursor() as cur:
                    cur.execute(f"SELECT * FROM {table} LIMIT 0", {})
                    self._columns[table] = [str(d[0]) for d in cur.description or ()]
        return self._columns[table]

    def exists(self, spec: TableSpec) -> bool:
        try:
            self.columns(spec)
        except Exception:  # noqa: BLE001 - TABLE_OR_VIEW_NOT_FOUND (or no right to read it)
            return False
        return True

    def ensure(self, spec: TableSpec, properties: Mapping[str, str] | None = None) -> None:
        """Check that the table exists with every column: the app's principal may read and
        modify the tables, not create or alter them (the setup job's ``create_tables`` does)."""
        table = self.names.table(spec)
        if not self.exists(spec):
            raise ReviewError(f"{table} does not exist: run the bundle's setup job", 503)
        missing = [n for n in spec.arrow_schema.names if n not in set(self.columns(spec))]
        if missing:
            self._columns.pop(table)  # looked up again next time (after the setup job)
            raise ReviewError(
                f"{table} lacks column(s) {', '.join(missing)}: run the bundle's setup job", 503
            )

    def read(
        self, spec: TableSpec, columns: list[str] | None = None, filter: Filter | None = None
    ) -> pa.Table:
        names = columns or spec.arrow_schema.names
        schema = pa.schema([spec.arrow_schema.field(c) for c in names])
        if not self.exists(spec):
            return schema.empty_table()
        where, params = where_clause(filter)
        rows = self.rows(f"SELECT {', '.join(names)} FROM {self.names.table(spec)}{where}", params)
        # naive TIMESTAMP values (the session time zone, UTC for the app) are read as UTC
        return pa.Table.from_pylist(rows, schema=schema)

    def query(self, sql: str, relations: Mapping[str, Relation]) -> pa.Table:
        """The rule's SQL with each relation a ``WITH``: a `TableRef` selects from the table in
        the warehouse, Arrow rows are inlined as parameter rows."""
        ctes = []
        params: Params = {}
        for k, (name, table) in enumerate(relations.items()):
            if isinstance(table, TableRef):
                columns = ", ".join(table.columns) if table.columns else "*"
                ctes.append(f"{name} AS (SELECT {columns} FROM {self.names.table(table.spec)})")
            elif table.num_rows:
                rows, values = values_relation(table, name, prefix=f"r{k}_")
                ctes.append(f"{name} AS (SELECT * FROM {rows})")
                params.update(values)
            else:
                nulls = ", ".join(f"CAST(NULL AS {sql_type(f)}) AS {f.name}" for f in table.schema)
                ctes.append(f"{name} AS (SELECT {nulls} WHERE FALSE)")
        body = sql.strip()
        if ctes and body[:5].upper() == "WITH ":
            body = f"WITH {', '.join(ctes)}, {body[5:]}"
        elif ctes:
            body = f"WITH {', '.join(ctes)} {body}"
        return pa.Table.from_pylist(self.rows(body, params))

    def append(self, spec: TableSpec, data: pa.Table, *, operation: str) -> int:
        """INSERT of the rows whose keys the table lacks (one statement); rows offered."""
        if data.num_rows == 0:
            return 0
        data = data.select(spec.arrow_schema.names).cast(spec.arrow_schema)
        rows, params = values_relation(data, "s")
        table = self.names.table(spec)
        on = " AND ".join(f"t.{k} = s.{k}" for k in spec.keys)
        columns = ", ".join(spec.arrow_schema.names)
        self.rows(
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {rows} "
            f"WHERE NOT EXISTS (SELECT 1 FROM {table} AS t WHERE {on})",
            params,
        )
        return data.num_rows

    def merge(self, spec: TableSpec, data: pa.Table, *, operation: str) -> int:
        if data.num_rows == 0:
            return 0
        data = data.select(spec.arrow_schema.names).cast(spec.arrow_schema)
        rows, params = values_relation(data, "s")
        names = spec.arrow_schema.names
        on = " AND ".join(f"t.{k} = s.{k}" for k in spec.keys)
        sets = ", ".join(f"{c} = s.{c}" for c in names if c not in spec.keys)
        self.rows(
            f"MERGE INTO {self.names.table(spec)} AS t USING {rows} ON {on} "
            f"WHEN MATCHED THEN UPDATE SET {sets} "
            f"WHEN NOT MATCHED THEN INSERT ({', '.join(names)}) "
            f"VALUES ({', '.join(f's.{c}' for c in names)})",
            params,
        )
        return data.num_rows

    def delete(self, spec: TableSpec, filter: Filter, *, operation: str) -> int:
        where, params = where_clause(filter)
        table = self.names.table(spec)
        found = self.rows(f"SELECT count(*) AS n FROM {table}{where}", params)
        matched = int(str(found[0]["n"])) if found else 0
        if matched:
            self.rows(f"DELETE FROM {table}{where}", params)
        return matched


class WarehouseStore(CatalogReviewStore):
    """The port `cxrlake.review.ports.ReviewStore` over a SQL warehouse: the same store as
    `cxrlake.review.store.LocalStore`, over `WarehouseCatalog`; image bytes always from bronze."""

    engine = "databricks"
    history_attempts = HISTORY_RETRIES

    def __init__(
        self, names: WarehouseNames, connect: Callable[[], Connection] = connect_from_env
    ) -> None:
        self.names = names
        super().__init__(WarehouseCatalog(names, connect))


__all__ = [
    "Connection",
    "Cursor",
    "WarehouseCatalog",
    "WarehouseNames",
    "WarehouseStore",
    "connect_from_env",
    "sql_type",
    "values_relation",
    "where_clause",
]
