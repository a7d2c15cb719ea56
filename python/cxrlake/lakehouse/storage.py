"""Delta table I/O for the local lakehouse (delta-rs): create, append, merge, read, lock.

Every write is one atomic Delta commit. The pipeline holds an exclusive `LakehouseLock` for the
whole run, so a second run on the same lakehouse waits and then finds nothing left to do; commits
also carry ``max_commit_retries`` for writers outside the pipeline (e.g. ``cxrlake maintain``).

Fault injection for tests: with ``CXRLAKE_FAULT_KILL_AFTER_COMMIT=N`` in the environment the
process sends itself SIGKILL right after its N-th commit, so a test can stop a run at every
commit boundary and check that the next run repairs it.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake import Field as DeltaField

from cxrlake.medallion import schemas
from cxrlake.medallion.schemas import TableSpec

COMMIT_RETRIES = 20
LOCK_FILE = "_cxrlake.lock"
SOURCES_FILE = "_cxrlake_sources.json"
FAULT_ENV = "CXRLAKE_FAULT_KILL_AFTER_COMMIT"

_commits = 0


def _committed() -> None:
    """Count a commit of this process; SIGKILL itself after the N-th when `FAULT_ENV` is set."""
    global _commits
    _commits += 1
    kill_after = os.environ.get(FAULT_ENV)
    if kill_after and _commits == int(kill_after):
        os.kill(os.getpid(), signal.SIGKILL)


def commits_made() -> int:
    """Delta commits this process has made through `Lakehouse` (tests, fault injection)."""
    return _commits


class LakehouseLock:
    """Exclusive advisory lock (``fcntl.flock``) on ``<catalog>/_cxrlake.lock``.

    Blocks until the lock is free, saying so on stderr first (with the holder's pid, which the
    holder writes into the lock file). The kernel releases it when the process dies (kill -9
    included), so a crashed run never leaves a stale lock behind.
    """

    def __init__(self, lakehouse: str | os.PathLike, env: str = "dev") -> None:
        self.path = os.path.join(schemas.catalog_path(lakehouse, env), LOCK_FILE)
        self._fd: int | None = None

    def __enter__(self) -> LakehouseLock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                print(
                    f"cxrlake: waiting for the lakehouse lock held by pid {holder} "
                    f"({self.path}) ...",
                    file=sys.stderr,
                    flush=True,
                )
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def commit_properties(**metadata: str) -> CommitProperties:
    """Commit properties: retries on conflicts plus ``cxrlake.*`` audit metadata in the log."""
    return CommitProperties(
        custom_metadata={f"cxrlake.{k}": v for k, v in metadata.items()},
        max_commit_retries=COMMIT_RETRIES,
    )


class Lakehouse:
    """The Delta tables of one catalog ``<root>/healthcare_catalog_<env>``."""

    def __init__(self, root: str | os.PathLike, env: str = "dev") -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.env = schemas.validate_env(env)
        self.catalog = schemas.catalog_path(self.root, env)
        # one DeltaTable per table, brought up to date before each use: loading a table's log
        # from scratch for every read and write costs more than many small commits
        self._tables: dict[str, DeltaTable] = {}

    def record_sources(self, sources: Iterable[str | os.PathLike]) -> list[str]:
        """Add source folders to ``<catalog>/_cxrlake_sources.json`` (call under the lock).

        The SQL layer reads them back as the default sandbox roots of ``predict(path)``.
        Returns every recorded source (absolute, sorted).
        """
        known = set(self.recorded_sources())
        merged = sorted(known | {os.path.abspath(os.fspath(s)) for s in sources})
        if merged != sorted(known):
            os.makedirs(self.catalog, exist_ok=True)
            path = os.path.join(self.catalog, SOURCES_FILE)
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"sources": merged}, f, indent=1)
            os.replace(tmp, path)
        return merged

    def recorded_sources(self) -> list[str]:
        """Source folders pipeline runs have read from (empty when none recorded)."""
        try:
            with open(os.path.join(self.catalog, SOURCES_FILE), encoding="utf-8") as f:
                return list(json.load(f)["sources"])
        except FileNotFoundError:
            return []

    def path(self, spec: TableSpec) -> str:
        """Directory of one table."""
        return spec.path(self.root, self.env)

    def exists(self, spec: TableSpec) -> bool:
        """Whether the table has a Delta log."""
        return spec.qualified_name in self._tables or DeltaTable.is_deltatable(self.path(spec))

    def create_all(self) -> None:
        """Create every missing table with its schema and `schemas.TABLE_PROPERTIES` (CDF on);
        add the nullable columns a table written by an earlier version lacks (`add_columns`)."""
        for spec in schemas.TABLES:
            if self.exists(spec):
                self.add_columns(spec)
            else:
                os.makedirs(self.path(spec), exist_ok=True)
                DeltaTable.create(
                    self.path(spec),
                    spec.arrow_schema,
                    mode="ignore",
                    name=spec.name,
                    description=f"cxrlake {spec.qualified_name}",
                    configuration=schemas.TABLE_PROPERTIES,
                    commit_properties=commit_properties(operation="create"),
                )
                _committed()

    def add_columns(self, spec: TableSpec) -> list[str]:
        """Add to an existing table the columns of ``spec`` it lacks, in one commit (none when
        nothing is missing); the rows already written read them as null. Returns their names.

        Only nullable columns can be added this way (Delta schema evolution); a missing column
        that is not nullable is an error naming the table and column.
        """
        have = set(pa.schema(self.table(spec).schema().to_arrow()).names)
        missing = [f for f in spec.arrow_schema if f.name not in have]
        if not missing:
            return []
        required = [f.name for f in missing if not f.nullable]
        if required:
            raise ValueError(
                f"{spec.qualified_name} lacks required column(s) {', '.join(required)}: "
                "rebuild the table (it cannot be evolved in place)"
            )
        self.table(spec).alter.add_columns(
            [DeltaField.from_arrow(f) for f in missing],
            commit_properties=commit_properties(operation="add_columns"),
        )
        _committed()
        return [f.name for f in missing]

    def table(self, spec: TableSpec) -> DeltaTable:
        """The current version of a table (raises if it does not exist)."""
        table = self._tables.get(spec.qualified_name)
        if table is None:
            table = self._tables[spec.qualified_name] = DeltaTable(self.path(spec))
        else:
            table.update_incremental()
        return table

    def dataset(self, spec: TableSpec) -> pads.Dataset:
        """A pyarrow dataset over the table's current files (projection and filter pushdown).

        Built from the snapshot's parquet files with pyarrow's own local file system rather than
        ``DeltaTable.to_pyarrow_dataset()``, whose Python file-system handler can abort the
        interpreter at exit ("terminate called without an active exception"). Valid because the
        lakehouse tables use neither partitions, column mapping nor deletion vectors.
        """
        table = self.table(spec)
        features = set(table.protocol().reader_features or ())
        if features & {"deletionVectors", "columnMapping"} or table.metadata().partition_columns:
            return table.to_pyarrow_dataset()  # a table written by another engine
        return pads.dataset(
            table.file_uris(), format="parquet", schema=pa.schema(table.schema().to_arrow())
        )

    def read(
        self,
        spec: TableSpec,
        columns: list[str] | None = None,
        filter: pc.Expression | None = None,
    ) -> pa.Table:
        """Read (some columns of) a table; an absent table reads as empty."""
        if not self.exists(spec):
            schema = spec.arrow_schema
            if columns is not None:
                schema = pa.schema([schema.field(c) for c in columns])
            return schema.empty_table()
        return self.dataset(spec).to_table(columns=columns, filter=filter)

    def scan_batches(
        self,
        spec: TableSpec,
        columns: list[str],
        filter: pc.Expression | None,
        batch_size: int,
    ) -> Iterator[pa.RecordBatch]:
        """Stream a table in record batches of at most ``batch_size`` rows (bounded memory)."""
        if not self.exists(spec):
            return
        scanner = self.dataset(spec).scanner(
            columns=columns, filter=filter, batch_size=batch_size, batch_readahead=1
        )
        for batch in scanner.to_batches():
            if batch.num_rows:
                yield batch

    def count(self, spec: TableSpec) -> int:
        """Number of rows in a table (0 when absent)."""
        return self.table(spec).count() if self.exists(spec) else 0

    def append(self, spec: TableSpec, data: pa.RecordBatch | pa.Table, **meta: str) -> int:
        """Append rows in one commit; returns the number of rows (no commit when empty)."""
        data = _conform(data, spec)
        if data.num_rows == 0:
            return 0
        write_deltalake(
            self.table(spec),
            data,
            mode="append",
            commit_properties=commit_properties(**meta),
        )
        _committed()
        return data.num_rows

    def merge(self, spec: TableSpec, data: pa.RecordBatch | pa.Table, **meta: str) -> dict:
        """Upsert rows on the table's keys (update all columns / insert) in one commit."""
        data = _conform(data, spec)
        if data.num_rows == 0:
            return {"num_target_rows_inserted": 0, "num_target_rows_updated": 0}
        predicate = " AND ".join(f"t.{k} = s.{k}" for k in spec.keys)
        result = (
            self.table(spec)
            .merge(
                data,
                predicate=predicate,
                source_alias="s",
                target_alias="t",
                commit_properties=commit_properties(**meta),
            )
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )
        _committed()
        return result

    def update_columns(
        self, spec: TableSpec, data: pa.Table, columns: list[str], **meta: str
    ) -> int:
        """Set ``columns`` of the rows matching ``data`` on the table's keys (one commit; none
        when ``data`` is empty). Returns the number of rows updated."""
        if data.num_rows == 0:
            return 0
        types = {f.name: f.type for f in spec.arrow_schema}
        data = data.select([*spec.keys, *columns]).cast(
            pa.schema([pa.field(c, types[c]) for c in (*spec.keys, *columns)])
        )
        predicate = " AND ".join(f"t.{k} = s.{k}" for k in spec.keys)
        result = (
            self.table(spec)
            .merge(
                data,
                predicate=predicate,
                source_alias="s",
                target_alias="t",
                commit_properties=commit_properties(**meta),
            )
            .when_matched_update({c: f"s.{c}" for c in columns})
            .execute()
        )
        _committed()
        return int(result.get("num_target_rows_updated", 0))

    def delete_keys(self, spec: TableSpec, column: str, values: Iterable[str], **meta: str) -> int:
        """Delete rows whose ``column`` is one of ``values`` (one commit; none when empty)."""
        values = sorted(set(values))
        if not values:
            return 0
        quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
        result = self.table(spec).delete(
            f"{column} IN ({quoted})", commit_properties=commit_properties(**meta)
        )
        _committed()
        return int(result.get("num_deleted_rows", 0))


def _conform(data: pa.RecordBatch | pa.Table, spec: TableSpec) -> pa.Table:
    table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
    return table.select(spec.arrow_schema.names).cast(spec.arrow_schema)
