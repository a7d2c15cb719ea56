"""Delta table I/O for the local lakehouse (delta-rs): create, append, merge, read, lock.

Every write is one atomic Delta commit. The pipeline holds an exclusive `LakehouseLock` for the
whole run, so a second run on the same lakehouse waits and then finds nothing left to do; commits
also carry ``max_commit_retries`` for writers outside the pipeline (e.g. ``cxrlake maintain``).

Fault injection for tests: with ``CXRLAKE_FAULT_KILL_AFTER_COMMIT=N`` in the environment the
process sends itself SIGKILL right after its N-th commit, so a test can stop a run at every
commit boundary and check that the next run repairs it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import (
    ColumnProperties,
    CommitProperties,
    DeltaTable,
    WriterProperties,
    write_deltalake,
)
from deltalake import Field as DeltaField

from cxrlake.exceptions import CxrlakeError
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


class LakehouseWriteError(CxrlakeError, OSError):
    """A Delta write failed for an operating-system reason (``errno``: ENOSPC, EFBIG, EROFS ...);
    the commit did not happen, so the table is unchanged. The message starts with the reason in
    plain words (``disk full: cannot write ...``). ``panics`` holds the report of any Rust writer
    thread that panicked on the way (printed to nobody)."""

    panics: list[str]


#: delta-rs and object_store bury the OS error deep in their message ("... (os error 28)"):
#: these reasons are named first in a `LakehouseWriteError`.
_OS_ERROR_WORDS = {
    errno.ENOSPC: "disk full",
    errno.EFBIG: "file too large",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
}


_PANIC_LINE = re.compile(r"^thread '.*' (\(\d+\) )?panicked at ")
#: Lines that follow a panic's message in Rust's report: the backtrace and its notes.
_PANIC_TRAILER = ("stack backtrace:", "note: ", " ", "\t")


@contextlib.contextmanager
def _stderr_without_rust_panics(panics: list[str]) -> Iterator[None]:
    """Route file descriptor 2 through a pipe while the block runs; copy everything back to the
    real stderr except Rust panic reports (a ``thread '...' panicked at`` line and the lines up to
    the next line that is not part of the report), which are appended to ``panics``.

    Rust libraries print panics of their worker threads straight to file descriptor 2, whatever
    Python does with ``sys.stderr``; the error itself still reaches Python as an exception.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to protect
        yield
        return
    read_end, write_end = os.pipe()
    chunks: list[bytes] = []

    def drain() -> None:
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)

    reader = threading.Thread(target=drain, name="cxrlake-stderr", daemon=True)
    reader.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees EOF
        os.close(saved)
        reader.join()
        os.close(read_end)
        kept: list[str] = []
        state = "text"  # or "message" (the line after "panicked at"), or "trailer"
        for line in b"".join(chunks).decode("utf-8", "replace").splitlines(keepends=True):
            if _PANIC_LINE.match(line):
                if kept and not kept[-1].strip():  # the blank line Rust writes before a report
                    kept.pop()
                panics.append(line)
                state = "message"
            elif state == "message" or (state == "trailer" and line.startswith(_PANIC_TRAILER)):
                panics[-1] += line
                state = "trailer"
            else:
                kept.append(line)
                state = "text"
        if kept:
            os.write(2, "".join(kept).encode())


class LakehouseLock:
    """Exclusive advisory lock (``fcntl.flock``) on ``<catalog>/_cxrlake.lock``.

    Blocks until the lock is free, saying so on stderr first (with the holder's pid, which the
    holder writes into the lock file). The kernel releases it when the process dies (kill -9
    included), so a crashed run never leaves a stale lock behind.
    """

    def __init__(self, lakehouse: str | os.PathLike[str], env: str = "dev") -> None:
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

    def __init__(self, root: str | os.PathLike[str], env: str = "dev") -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.env = schemas.validate_env(env)
        self.catalog = schemas.catalog_path(self.root, env)
        # one DeltaTable per table, brought up to date before each use: loading a table's log
        # from scratch for every read and write costs more than many small commits
        self._tables: dict[str, DeltaTable] = {}

    def record_sources(self, sources: Iterable[str | os.PathLike[str]]) -> list[str]:
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
        """Create every missing medallion table (`ensure`)."""
        for spec in schemas.TABLES:
            self.ensure(spec)

    def ensure(self, spec: TableSpec, properties: Mapping[str, str] | None = None) -> None:
        """Create the table when missing, with its schema, `schemas.TABLE_PROPERTIES` (CDF on)
        and ``properties``; else add the nullable columns a table written by an earlier version
        lacks (`add_columns`)."""
        if self.exists(spec):
            self.add_columns(spec)
            return
        os.makedirs(self.path(spec), exist_ok=True)
        with self._writing(spec):
            DeltaTable.create(
                self.path(spec),
                spec.arrow_schema,
                mode="ignore",
                name=spec.name,
                description=f"cxrlake {spec.qualified_name}",
                configuration={**schemas.TABLE_PROPERTIES, **(properties or {})},
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
        with self._writing(spec):
            self.table(spec).alter.add_columns(
                [DeltaField.from_arrow(f) for f in missing],
                commit_properties=commit_properties(operation="add_columns"),
            )
        _committed()
        return [f.name for f in missing]

    @contextlib.contextmanager
    def _writing(self, spec: TableSpec) -> Iterator[None]:
        """One Delta write: a failure that is an OS error (disk full, file too large, read-only)
        becomes `LakehouseWriteError` naming the table, and the panic report a Rust writer thread
        prints on the way (object_store's upload task: "panicked at ...: Already shut down") is
        kept off the terminal (it is attached to the error as a note instead)."""
        panics: list[str] = []
        try:
            with _stderr_without_rust_panics(panics):
                yield
        except Exception as e:
            for report in panics:  # shown by --debug's trace, never on a plain run
                e.add_note(report.rstrip())
            found = re.search(r"\(os error (\d+)\)", str(e))
            if found is None:
                raise
            code = int(found.group(1))
            message = (
                f"cannot write {spec.qualified_name} ({self.path(spec)}): "
                f"{os.strerror(code)} (os error {code})"
            )
            if code in _OS_ERROR_WORDS:
                message = f"{_OS_ERROR_WORDS[code]}: {message}"
            error = LakehouseWriteError(code, message)
            error.panics = panics
            raise error from e

    def table(self, spec: TableSpec) -> DeltaTable:
        """The current version of a table (raises if it does not exist)."""
        table = self._tables.get(spec.qualified_name)
        if table is None:
            table = self._tables[spec.qualified_name] = DeltaTable(self.path(spec))
        else:
            table.update_incremental()
        return table

    def _files(self, spec: TableSpec) -> tuple[pa.Schema, list[str] | None]:
        """The table's schema and its snapshot's parquet files, or None for the files when the
        table must be read through delta-rs (a table written by another engine with deletion
        vectors, column mapping or partitions: the lakehouse's own tables use none of them).

        The files are read with pyarrow's parquet reader directly: it needs neither
        ``pyarrow.dataset`` (whose import pulls in pandas, a quarter of a second of every run)
        nor ``DeltaTable.to_pyarrow_dataset()``, whose Python file-system handler can abort the
        interpreter at exit ("terminate called without an active exception").
        """
        table = self.table(spec)
        schema = pa.schema(table.schema().to_arrow())
        features = set(table.protocol().reader_features or ())
        if features & {"deletionVectors", "columnMapping"} or table.metadata().partition_columns:
            return schema, None
        return schema, [u.removeprefix("file://") for u in table.file_uris()]

    def read(
        self,
        spec: TableSpec,
        columns: list[str] | None = None,
        filter: Mapping[str, object] | None = None,
    ) -> pa.Table:
        """Read (some columns of) a table; an absent table reads as empty.

        ``filter`` keeps the rows whose every named column equals the given value, or is one of
        the given values when that is a list, set or Arrow array (``{"image_id": ids,
        "model_version": "1.1.0"}``).
        """
        if not self.exists(spec):
            schema = spec.arrow_schema
            if columns is not None:
                schema = pa.schema([schema.field(c) for c in columns])
            return schema.empty_table()
        wanted, batches = self._scan(spec, columns, filter, None)
        return pa.Table.from_batches(list(batches), schema=wanted)

    def scan_batches(
        self,
        spec: TableSpec,
        columns: list[str],
        filter: Mapping[str, object] | None,
        batch_size: int,
    ) -> Iterator[pa.RecordBatch]:
        """Stream a table in record batches of at most ``batch_size`` rows (bounded memory);
        ``filter`` as in `read`."""
        if not self.exists(spec):
            return
        for batch in self._scan(spec, columns, filter, batch_size)[1]:
            if batch.num_rows:
                yield batch

    def _scan(
        self,
        spec: TableSpec,
        columns: list[str] | None,
        filter: Mapping[str, object] | None,
        batch_size: int | None,
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """The schema of the rows asked for, and a stream of them (one snapshot)."""
        schema, files = self._files(spec)
        wanted = schema if columns is None else pa.schema([schema.field(c) for c in columns])
        needed = list(dict.fromkeys([*wanted.names, *(filter or {})]))
        if files is None:
            table = self.table(spec).to_pyarrow_table(columns=needed)
            parts: Iterable[pa.RecordBatch] = table.to_batches(max_chunksize=batch_size)
        else:
            parts = _read_files(files, needed, batch_size)
        target = pa.schema([schema.field(c) for c in needed])

        def stream() -> Iterator[pa.RecordBatch]:
            for part in parts:
                batch = _conform_batch(part, target)
                if filter:
                    batch = batch.filter(_mask(batch, filter))
                yield batch.select(wanted.names)

        return wanted, stream()

    def count(self, spec: TableSpec) -> int:
        """Number of rows in a table (0 when absent)."""
        return self.table(spec).count() if self.exists(spec) else 0

    def append(self, spec: TableSpec, data: pa.RecordBatch | pa.Table, **meta: str) -> int:
        """Append rows in one commit; returns the number of rows (no commit when empty)."""
        data = _conform(data, spec)
        if data.num_rows == 0:
            return 0
        with self._writing(spec):
            # delta-rs's stubs want WriterProperties; None (its default) keeps its defaults
            write_deltalake(  # type: ignore[call-overload]
                self.table(spec),
                data,
                mode="append",
                commit_properties=commit_properties(**meta),
                writer_properties=_writer_properties(spec),
            )
        _committed()
        return data.num_rows

    def merge(
        self, spec: TableSpec, data: pa.RecordBatch | pa.Table, **meta: str
    ) -> dict[str, int]:
        """Upsert rows on the table's keys (update all columns / insert) in one commit."""
        data = _conform(data, spec)
        if data.num_rows == 0:
            return {"num_target_rows_inserted": 0, "num_target_rows_updated": 0}
        predicate = " AND ".join(f"t.{k} = s.{k}" for k in spec.keys)
        with self._writing(spec):
            result = (
                self.table(spec)
                .merge(
                    data,
                    predicate=predicate,
                    source_alias="s",
                    target_alias="t",
                    commit_properties=commit_properties(**meta),
                    writer_properties=_writer_properties(spec),
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
        with self._writing(spec):
            result = (
                self.table(spec)
                .merge(
                    data,
                    predicate=predicate,
                    source_alias="s",
                    target_alias="t",
                    commit_properties=commit_properties(**meta),
                    writer_properties=_writer_properties(spec),
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
        return self.delete_where(spec, f"{column} IN ({quoted})", **meta)

    def delete_where(self, spec: TableSpec, predicate: str, **meta: str) -> int:
        """Delete the rows a delta-rs SQL ``predicate`` selects, in one commit."""
        with self._writing(spec):
            result = self.table(spec).delete(
                predicate,
                commit_properties=commit_properties(**meta),
                writer_properties=_writer_properties(spec),
            )
        _committed()
        return int(result.get("num_deleted_rows", 0))


def _conform(data: pa.RecordBatch | pa.Table, spec: TableSpec) -> pa.Table:
    table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
    return table.select(spec.arrow_schema.names).cast(spec.arrow_schema)


def _read_files(
    files: list[str], columns: list[str], batch_size: int | None
) -> Iterator[pa.RecordBatch]:
    """The ``columns`` each parquet file has, in batches (the whole file when no size)."""
    for path in files:
        handle = pq.ParquetFile(path)
        present = [c for c in columns if c in handle.schema_arrow.names]
        if batch_size is None:
            yield from handle.read(columns=present).to_batches()
        else:
            yield from handle.iter_batches(batch_size=batch_size, columns=present)


def _conform_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` with exactly ``schema``'s columns and types: columns a file written before they
    were added (schema evolution) lacks read as nulls."""
    arrays = [
        batch.column(f.name).cast(f.type)
        if f.name in batch.schema.names
        else pa.nulls(batch.num_rows, f.type)
        for f in schema
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _mask(batch: pa.RecordBatch, filter: Mapping[str, object]) -> pa.Array:
    mask = None
    for column, value in filter.items():
        values = batch.column(column)
        if isinstance(value, (list, set, frozenset, tuple, pa.Array, pa.ChunkedArray)):
            if not isinstance(value, (pa.Array, pa.ChunkedArray)):
                value = pa.array(sorted(value), values.type)
            keep = pc.is_in(values, value_set=value.cast(values.type))
        else:
            keep = pc.equal(values, pa.scalar(value, values.type))
        keep = pc.fill_null(keep, False)
        mask = keep if mask is None else pc.and_(mask, keep)
    return mask


def _writer_properties(spec: TableSpec) -> WriterProperties | None:
    """Parquet settings: image bytes (bronze ``content``) get neither a dictionary (no two
    values repeat) nor min/max statistics (nobody filters on them); the rest the defaults."""
    if "content" not in spec.arrow_schema.names:
        return None
    plain = ColumnProperties(dictionary_enabled=False, statistics_enabled="NONE")
    return WriterProperties(column_properties={"content": plain})
