"""DuckDB over the lakehouse's Delta tables, with the Rust kernels as SQL functions.

The same SQL runs here and on Databricks: every Delta table under
``<lakehouse>/healthcare_catalog_<env>/<schema>/<table>`` is a view with its Unity Catalog name,
``healthcare_catalog_<env>.<schema>.<table>``, and (the catalog being the current one)
``<schema>.<table>``. ``SHOW TABLES [IN schema]`` lists those tables.

Tables are read by delta-rs from each table's current Delta snapshot and handed to DuckDB as
Arrow datasets (columns and filters pushed down to pyarrow's parquet reader), so DuckDB itself
opens no file; DuckDB's ``delta`` extension would download itself at run time. Parquet files
written by MERGE hold ``string_view`` columns and files rewritten by compaction plain ``string``;
the dataset reads both with the table's schema, so filters compare the same on every file. The
connection is a read snapshot: reopen it to see later commits.

The connection is locked down and cannot write or read any file by SQL: DuckDB's external access
is off and its local file system disabled (``read_text``, ``read_blob``, ``COPY ... TO``,
``ATTACH``, ``EXPORT DATABASE``, ``INSTALL``/``LOAD``, persistent secrets all fail), spilling to a
temp directory is off, Python replacement scans are off, and the configuration is locked (``SET``
and ``RESET`` fail). The only way SQL reads an image file is through the functions below, which
go through the core's sandbox (``roots``).

SQL functions (Arrow-vectorised; a NULL or unreadable image gives NULL fields and an ``error``).
Each takes a file path (VARCHAR); the ``*_bytes`` variant takes image bytes (BLOB, e.g.
``bronze.kaggle_xray_metadata.content``):

- ``predict(path)`` -> STRUCT(probability DOUBLE, predicted_label INTEGER, label_name VARCHAR,
  model_name VARCHAR, model_version VARCHAR, ood_score DOUBLE, out_of_distribution BOOLEAN,
  ood_reason VARCHAR, error VARCHAR): the struct the Spark ``predict``
  and the Databricks SQL functions return. Also as ``healthcare_catalog_<env>.bronze.predict``
  and ``healthcare_catalog_<env>.models.predict_image`` (bytes), the Databricks names.
- ``features(path)`` -> STRUCT(width, height, mean_pixel_value, std_pixel_value, quality_score,
  embedding DOUBLE[], error): as the Spark ``features``.
- ``explain(path)`` -> STRUCT(heatmap STRUCT(rows, cols, values FLOAT[]), heatmap_scale,
  probability, predicted_label, overlay BLOB, model_name, model_version, error): the model's
  class-activation map, as the Spark ``explain``; ``overlay`` is NULL here, and
  ``explain_overlay(path, size) -> BLOB`` returns the overlay PNG (longer side ``size`` pixels).
- ``quality_score(path) -> DOUBLE``: image quality score, 0..1 (no model needed).
- ``image_error(path) -> VARCHAR``: why the pipeline would quarantine the image (the same rule
  and words as ``silver.quarantine.reason``), NULL when it is usable.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Callable, Iterator

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
from deltalake import DeltaTable

from cxrlake._api import decode
from cxrlake._api import explain as explain_kernel
from cxrlake._api import features as features_kernel
from cxrlake._api import predict as predict_kernel
from cxrlake.columns import EXPLAIN, FEATURES, PREDICT
from cxrlake.exceptions import CxrlakeError
from cxrlake.lakehouse.storage import Lakehouse
from cxrlake.medallion import schemas
from cxrlake.medallion.transforms import ModelArg, load_model, quarantine_reasons
from cxrlake.model import Model

OUTPUT_FORMATS = ("table", "csv", "json", "jsonl")

ROOTS_ENV = "CXRLAKE_ALLOWED_ROOTS"

SANDBOX_HINT = (
    "hint: SQL functions read only the lakehouse and its source folders; allow another folder "
    "with --allowed-root DIR (repeatable) or env CXRLAKE_ALLOWED_ROOTS"
)

_SHOW_TABLES = re.compile(
    r"^(?:\s|--[^\n]*\n|/\*.*?\*/)*SHOW\s+TABLES(?:\s+(?:IN|FROM)\s+([\w.`\"]+))?\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)


class LakehouseNotFoundError(CxrlakeError, FileNotFoundError):
    """The lakehouse folder holds no catalog for this environment."""


def default_roots(lh: Lakehouse) -> list[str] | None:
    """Sandbox roots for path arguments of the SQL functions.

    None (the core then reads env ``CXRLAKE_ALLOWED_ROOTS``) when that variable is set; else the
    lakehouse root plus every source folder a pipeline run has read from, so ``predict(path)``
    reads the lakehouse's own images and nothing else.
    """
    if ROOTS_ENV in os.environ:
        return None
    return [lh.root, *(s for s in lh.recorded_sources() if os.path.isdir(s))]


def catalog_name(env: str) -> str:
    """``healthcare_catalog_<env>``: the Unity Catalog catalog of one environment."""
    return os.path.basename(schemas.catalog_path("/", env))


# ------------------------------------------------------------------ functions
def _struct_of(batch: pa.RecordBatch, names: list[str]) -> pa.StructArray:
    return pa.StructArray.from_arrays([batch.column(n) for n in names], names=names)


Kernel = Callable[[pa.Array], pa.Array]
"""An Arrow-vectorised SQL function of one image column (paths or bytes)."""


def _kernels(model: Model, roots: list[str] | None) -> list[tuple[str, Kernel, str]]:
    """``(name, function, DuckDB return type)`` of the one-argument SQL functions."""

    def predict(images: pa.Array) -> pa.Array:
        return _struct_of(predict_kernel(images, model=model, roots=roots), PREDICT.names)

    def features(images: pa.Array) -> pa.Array:
        batch = features_kernel(images, model=model, roots=roots, embedding=model.has_embedding)
        return _struct_of(batch, FEATURES.names)

    def explain(images: pa.Array) -> pa.Array:
        return _struct_of(explain_kernel(images, model=model, roots=roots), EXPLAIN.names)

    def quality_score(images: pa.Array) -> pa.Array:
        return features_kernel(images, embedding=False, roots=roots).column("quality_score")

    def image_error(images: pa.Array) -> pa.Array:
        reasons = quarantine_reasons(decode(images, roots=roots))
        return reasons.combine_chunks() if isinstance(reasons, pa.ChunkedArray) else reasons

    kernels: list[tuple[str, Kernel, str]] = [
        ("predict", predict, _duck_type(pa.struct(PREDICT))),
        ("features", features, _duck_type(pa.struct(FEATURES))),
        ("quality_score", quality_score, "DOUBLE"),
        ("image_error", image_error, "VARCHAR"),
    ]
    if model.has_heatmap:
        kernels.append(("explain", explain, _duck_type(pa.struct(EXPLAIN))))
    return kernels


def _explain_overlay(
    model: Model, roots: list[str] | None
) -> Callable[[pa.Array, pa.Array], pa.Array]:
    """``explain_overlay(image, size)``: the overlay PNG of each row at its own size."""

    def explain_overlay(images: pa.Array, sizes: pa.Array) -> pa.Array:
        # one kernel call per distinct size in the batch, each row drawn at its own size;
        # a NULL size is NULL (as any SQL function of a NULL argument)
        wanted = sizes.to_pylist()
        out: list[bytes | None] = [None] * len(wanted)
        for size in sorted({s for s in wanted if s is not None}):
            rows = [i for i, s in enumerate(wanted) if s == size]
            if not 16 <= size <= 4096:
                raise ValueError(f"explain_overlay: size must be 16..4096 pixels, got {size}")
            batch = explain_kernel(
                images.take(pa.array(rows, pa.int64())),
                model=model,
                roots=roots,
                overlay_size=size,
            )
            for i, png in zip(rows, batch.column("overlay").to_pylist(), strict=True):
                out[i] = png
        return pa.array(out, pa.binary())

    return explain_overlay


def _register_udfs(
    con: duckdb.DuckDBPyConnection,
    model: ModelArg,
    roots: list[str] | None,
    catalog: str,
) -> None:
    loaded = load_model(model)
    # A misconfigured sandbox (an empty or missing root) fails here, not at the first row.
    decode(pa.array([], pa.string()), roots=roots)
    # DuckDB Python UDFs cannot be overloaded by argument type: bytes variants get a suffix.
    # Rows the core cannot read come back NULL (SPECIAL lets a UDF return NULLs). The options are
    # given as strings, which every DuckDB >= 1.1 takes (its stubs want the enums, which moved
    # from duckdb.functional to duckdb.func in 2.0).
    for name, fn, return_type in _kernels(loaded, roots):
        for suffix, arg_type in (("", "VARCHAR"), ("_bytes", "BLOB")):
            con.create_function(  # type: ignore[call-overload]
                name + suffix, fn, [arg_type], return_type, type="arrow", null_handling="special"
            )
    if loaded.has_heatmap:
        overlay = _explain_overlay(loaded, roots)
        for suffix, arg_type in (("", "VARCHAR"), ("_bytes", "BLOB")):
            con.create_function(  # type: ignore[call-overload]
                "explain_overlay" + suffix,
                overlay,
                [arg_type, "INTEGER"],
                "BLOB",
                type="arrow",
                null_handling="special",
            )
    # The Databricks names (sql/30_predict_function.sql): bronze.predict(path) and
    # models.predict_image(content), so queries written for a SQL warehouse run unchanged.
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {catalog}.models")
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {catalog}.bronze")
    con.execute(f"CREATE MACRO {catalog}.bronze.predict(path) AS predict(path)")
    con.execute(f"CREATE MACRO {catalog}.models.predict_image(content) AS predict_bytes(content)")


def _duck_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_struct(arrow_type):
        inner = ", ".join(f"{f.name} {_duck_type(f.type)}" for f in arrow_type)
        return f"STRUCT({inner})"
    if pa.types.is_list(arrow_type):
        return f"{_duck_type(arrow_type.value_type)}[]"
    simple = {
        pa.float64(): "DOUBLE",
        pa.float32(): "FLOAT",
        pa.binary(): "BLOB",
        pa.int32(): "INTEGER",
        pa.int64(): "BIGINT",
        pa.string(): "VARCHAR",
        pa.bool_(): "BOOLEAN",
    }
    return simple[arrow_type]


# ------------------------------------------------------------------ tables
def delta_tables(lh: Lakehouse) -> list[tuple[str, str, str]]:
    """``(schema, table, folder)`` of every Delta table in the catalog, sorted."""
    found = []
    for schema_name in sorted(os.listdir(lh.catalog)):
        schema_dir = os.path.join(lh.catalog, schema_name)
        if schema_name.startswith((".", "_")) or not os.path.isdir(schema_dir):
            continue
        for table_name in sorted(os.listdir(schema_dir)):
            folder = os.path.join(schema_dir, table_name)
            if os.path.isdir(os.path.join(folder, "_delta_log")):
                found.append((schema_name, table_name, folder))
    return found


def _create_table_view(
    con: duckdb.DuckDBPyConnection, catalog: str, schema_name: str, name: str, folder: str
) -> None:
    """Create ``catalog.schema.name`` over the table's current snapshot, read by delta-rs.

    DuckDB never opens a file of the table: the view scans an Arrow dataset that pyarrow reads
    (projection and filters pushed down), registered on the connection before it is locked.
    """
    table = DeltaTable(folder)
    qualified = f'{catalog}."{schema_name}"."{name}"'
    source = f"__cxrlake_{schema_name}_{name}"
    features = set(table.protocol().reader_features or ())
    if table.file_uris() and not features & {"deletionVectors", "columnMapping"}:
        con.register(source, table.to_pyarrow_dataset())
    else:
        # No file yet, or a layout only delta-rs can read: the rows themselves (small tables in
        # practice: an empty table, or one written by another engine).
        data = (
            table.to_pyarrow_table()
            if table.file_uris()
            else pa.schema(table.schema().to_arrow()).empty_table()
        )
        con.register(source, _plain_strings(data))
    con.execute(f'CREATE VIEW {qualified} AS SELECT * FROM "{source}"')


def _plain_strings(data: pa.Table) -> pa.Table:
    fields = [
        pa.field(f.name, pa.string() if pa.types.is_string_view(f.type) else f.type)
        for f in data.schema
    ]
    return data.cast(pa.schema(fields))


# ------------------------------------------------------------------ connection
def connect(
    lakehouse: str | os.PathLike[str],
    env: str = "dev",
    model: ModelArg = None,
    udfs: bool = True,
    roots: list[str] | None = None,
) -> duckdb.DuckDBPyConnection:
    """A locked-down in-memory DuckDB connection over the lakehouse (see the module docstring).

    Every Delta table is a view ``healthcare_catalog_<env>.<schema>.<table>`` (also reachable as
    ``<schema>.<table>``); ``gold.dataset_summary`` is defined when silver exists. With
    ``udfs``, the SQL functions of the module docstring (``model``: `cxrlake.Model`, path or
    None). ``roots``: folders the functions may read paths from (default: `default_roots`); a
    path elsewhere gives ``outside sandbox roots: <path>``. Raises `LakehouseNotFoundError`
    when there is no catalog. Close it when done (``con.close()`` or ``with``).
    """
    lh = Lakehouse(lakehouse, env)
    if not os.path.isdir(lh.catalog):
        if os.path.exists(lh.root) and not os.path.isdir(lh.root):
            raise LakehouseNotFoundError(f"lakehouse {lh.root} is not a directory")
        raise LakehouseNotFoundError(
            f"no lakehouse at {lh.catalog}: run `cxrlake pipeline run --lakehouse {lh.root}` first"
        )
    catalog = catalog_name(env)
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH ':memory:' AS {catalog}")
        con.execute(f"USE {catalog}")
        for schema_name, name, folder in delta_tables(lh):
            con.execute(f'CREATE SCHEMA IF NOT EXISTS {catalog}."{schema_name}"')
            _create_table_view(con, catalog, schema_name, name, folder)
        if lh.exists(schemas.SILVER):
            con.execute("CREATE SCHEMA IF NOT EXISTS gold")
            con.execute(
                f"CREATE VIEW {schemas.DATASET_SUMMARY_VIEW} AS {schemas.DATASET_SUMMARY_SQL}"
            )
        if udfs:
            _register_udfs(con, model, default_roots(lh) if roots is None else roots, catalog)
        _lock_down(con)
    except BaseException:
        con.close()
        raise
    return con


def _lock_down(con: duckdb.DuckDBPyConnection) -> None:
    """No file access for DuckDB at all, nothing persisted, configuration locked.

    The tables are Arrow scans and the functions read through the core's sandbox, so DuckDB
    itself needs no file: ``enable_external_access = false`` with no ``allowed_directories`` and
    the ``LocalFileSystem`` disabled refuse every path (``COPY ... TO``, ``ATTACH``, ``EXPORT
    DATABASE``, ``read_*``, ``INSTALL``/``LOAD``, persistent secrets), an empty
    ``temp_directory`` stops spilling to ``.tmp`` in the working directory, and
    ``lock_configuration`` makes every later ``SET`` / ``RESET`` / ``PRAGMA`` that changes a
    setting fail.
    """
    con.execute("SET python_enable_replacements = false")
    con.execute("SET temp_directory = ''")
    con.execute("SET allow_persistent_secrets = false")
    con.execute("SET allow_community_extensions = false")
    con.execute("SET disabled_filesystems = 'LocalFileSystem'")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


# ------------------------------------------------------------------ statements
def split_statements(sql: str) -> list[str]:
    """The statements of a script, in order: split at ``;`` outside quotes and comments.

    Done here rather than by DuckDB's parser so that statements DuckDB does not know, such as
    Databricks' ``SHOW TABLES IN gold``, can be answered by `execute`.
    """
    statements, current, i, n = [], [], 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"`":
            end = i + 1
            while end < n:
                if sql[end] == c:
                    if end + 1 < n and sql[end + 1] == c:  # doubled quote
                        end += 2
                        continue
                    break
                end += 1
            current.append(sql[i : end + 1])
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            current.append(sql[i:end])
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
            current.append(sql[i:end])
            i = end
        elif c == ";":
            statements.append("".join(current))
            current, i = [], i + 1
        else:
            current.append(c)
            i += 1
    statements.append("".join(current))
    return [s.strip() for s in statements if _has_code(s)]


def _has_code(statement: str) -> bool:
    """Whether a statement holds more than whitespace and comments."""
    text = re.sub(r"/\*.*?\*/", " ", statement, flags=re.DOTALL)
    text = re.sub(r"--[^\n]*", " ", text)
    return bool(text.strip())


def _show_tables(con: duckdb.DuckDBPyConnection, schema_name: str | None) -> pa.Table:
    """``SHOW TABLES [IN schema]`` as on Databricks: database, tableName, isTemporary."""
    catalog = con.execute("SELECT current_database()").fetchall()[0][0]
    if schema_name and "." in schema_name:
        catalog, schema_name = schema_name.split(".", 1)
    params: list[object] = [catalog]
    where = ""
    if schema_name:
        where = " AND schema_name = ?"
        params.append(schema_name.strip('`"'))
    sql = (
        "SELECT schema_name AS database, table_name AS tableName, false AS isTemporary FROM ("
        "SELECT database_name, schema_name, view_name AS table_name FROM duckdb_views() "
        "WHERE NOT internal UNION ALL SELECT database_name, schema_name, table_name "
        "FROM duckdb_tables()) WHERE database_name = ?" + where + " ORDER BY 1, 2"
    )
    return con.sql(sql, params=params).to_arrow_table()


def execute(con: duckdb.DuckDBPyConnection, statement: str) -> pa.Table | None:
    """Run one statement; its result as Arrow, or None for a statement without rows."""
    show = _SHOW_TABLES.match(statement)
    if show:
        return _show_tables(con, show.group(1))
    relation = con.sql(statement)
    return None if relation is None else relation.to_arrow_table()


def run_script(con: duckdb.DuckDBPyConnection, sql: str) -> Iterator[tuple[str, pa.Table | None]]:
    """Run every statement of ``sql`` in order; yield ``(statement, result)`` as each ends."""
    for statement in split_statements(sql):
        yield statement, execute(con, statement)


def query(
    lakehouse: str | os.PathLike[str],
    sql: str,
    env: str = "dev",
    model: ModelArg = None,
    roots: list[str] | None = None,
) -> pa.Table:
    """Run SQL over the lakehouse and return the last statement's result as an Arrow table."""
    con = connect(lakehouse, env, model, roots=roots)
    try:
        results = [result for _, result in run_script(con, sql)]
        last = results[-1] if results else None
        return last if last is not None else pa.table({})
    finally:
        con.close()


# ------------------------------------------------------------------ output
def format_result(table: pa.Table, fmt: str = "table", max_width: int = 60) -> str:
    """Render a query result as an aligned text table, CSV, a JSON array or JSON lines."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(OUTPUT_FORMATS)}")
    if fmt == "csv":
        buf = io.BytesIO()
        pacsv.write_csv(_printable(table), buf)
        return buf.getvalue().decode("utf-8").rstrip("\n")
    if fmt in ("json", "jsonl"):
        rows = [_finite(row) for row in _rows(table)]
        if fmt == "json":
            return json.dumps(rows, default=str, indent=1, allow_nan=False)
        return "\n".join(json.dumps(row, default=str, allow_nan=False) for row in rows)
    names = table.column_names
    cells = [[_cell(v, max_width) for v in row.values()] for row in _rows(table)]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    line = " | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))
    out = [line, "-+-".join("-" * w for w in widths)]
    out += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    out.append(f"({len(cells)} row{'s' if len(cells) != 1 else ''})")
    return "\n".join(out)


def _finite(value: object) -> object:
    """``value`` with NaN and infinities as None: JSON has no such numbers (``NaN`` in the output
    breaks every strict parser), so they print as ``null``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def mentions_sandbox_refusal(table: pa.Table) -> bool:
    """Whether any text in the result says ``outside sandbox roots`` (to print `SANDBOX_HINT`)."""
    return "outside sandbox roots" in str(_rows(table))


def _printable(table: pa.Table) -> pa.Table:
    """For CSV: binary values as ``<N bytes>`` and each nested value (struct, list, map) as
    its JSON text, since a CSV cell holds one value (``predict(path)`` prints as
    ``{"probability": 0.93, ...}``)."""
    cols = []
    for col in table.columns:
        if _is_binary(col.type) or _is_nested(col.type):
            texts = []
            for value in col.to_pylist():
                value = _plain(value)
                texts.append(
                    value
                    if value is None or isinstance(value, str)
                    else json.dumps(_finite(value), default=str, allow_nan=False)
                )
            cols.append(pa.array(texts, pa.string()))
        else:
            cols.append(col)
    return pa.table(cols, names=table.column_names)


def _rows(table: pa.Table) -> list[dict[str, object]]:
    """The rows as Python values, bytes as ``<N bytes>`` at any depth, maps as objects."""
    return [{k: _plain(v) for k, v in row.items()} for row in table.to_pylist()]


def _is_binary(kind: pa.DataType) -> bool:
    return (
        pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_fixed_size_binary(kind)
        or pa.types.is_binary_view(kind)
    )


def _is_nested(kind: pa.DataType) -> bool:
    return pa.types.is_nested(kind) or pa.types.is_dictionary(kind)


def _plain(value: object) -> object:
    """A Python value from an Arrow nested value with bytes as ``<N bytes>`` and map entries
    (a list of key/value pairs in Arrow) as an object."""
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            return {str(k): _plain(v) for k, v in value}
        return [_plain(v) for v in value]
    return value


def _cell(value: object, max_width: int) -> str:
    if value is None:
        text = "NULL"
    elif isinstance(value, bytes):
        text = f"<{len(value)} bytes>"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {_cell(v, max_width)}" for k, v in value.items()) + "}"
    elif isinstance(value, list):
        text = "[" + ", ".join(_cell(v, max_width) for v in value) + "]"
    else:
        text = str(value)
    return text if len(text) <= max_width else text[: max_width - 3] + "..."
