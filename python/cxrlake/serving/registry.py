"""Model aliases (``@champion``, ``@challenger``) and the champion/challenger comparison.

**Local registry.** A lakehouse keeps its aliases in the Delta table
``models.model_aliases`` (append-only: one row per move, the latest row of an alias is in
force, so the table is also the history of who served when). `LocalRegistry.set` copies the
ONNX file into ``<catalog>/models/files/<name>-v<version>-<sha12>.onnx`` first, so an alias
never points at a file that can change or vanish outside the lakehouse, and records its sha256;
`LocalRegistry.get` refuses a file whose bytes no longer match. Setting an alias to the model it
already names writes nothing.

**Databricks.** The aliases live in Unity Catalog: `set_mlflow_alias` calls
``MlflowClient.set_registered_model_alias`` (registry URI ``databricks-uc``, or any MLflow
registry such as the ``sqlite:///.../mlflow.db`` `cxrlake train` registers into).

`compute_comparison` runs `cxrlake.medallion.serving.COMPARISON` over the local inference
table and MERGEs ``gold.champion_challenger_comparison``; `format_comparison` prints it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
from typing import Any

import pyarrow as pa

from cxrlake.medallion import schemas
from cxrlake.medallion import serving as tables
from cxrlake.medallion.schemas import TS

MODEL_ALIASES_SCHEMA = tables.MODEL_ALIASES_SCHEMA
MODEL_ALIASES = tables.MODEL_ALIASES
ALIASES = ("champion", "challenger")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LocalRegistry:
    """The aliases of one local lakehouse (``models.model_aliases``)."""

    def __init__(self, lakehouse: str | os.PathLike[str], env: str = "dev") -> None:
        from cxrlake.lakehouse.storage import Lakehouse

        self.lakehouse = Lakehouse(lakehouse, env)

    def history(self) -> list[dict[str, Any]]:
        rows = self.lakehouse.read(MODEL_ALIASES).to_pylist()
        return sorted(rows, key=lambda r: (r["alias"], r["version"]))

    def get(self, alias: str) -> dict[str, Any] | None:
        """The row in force for ``alias`` (None when never set); checks the file's sha256."""
        rows = [r for r in self.history() if r["alias"] == alias]
        if not rows:
            return None
        entry = rows[-1]
        path = entry["model_path"]
        if not os.path.isfile(path) or _sha256(path) != entry["model_sha256"]:
            raise ValueError(
                f"the model file of @{alias} ({path}) is missing or changed since it was "
                "registered: set the alias again with `cxrlake promote`"
            )
        return entry

    def set(self, alias: str, model_file: str | None) -> tuple[dict[str, Any], bool]:
        """Point ``alias`` at ``model_file`` (None: the shipped model). Returns (row in force,
        whether a row was written)."""
        import cxrlake

        if alias not in ALIASES:
            raise ValueError(f"alias must be one of {', '.join(ALIASES)}, got {alias!r}")
        from cxrlake.lakehouse.storage import LakehouseLock

        model = cxrlake.Model(model_file)
        digest = _sha256(model.path)
        # one alias move at a time (versions 1, 2, ... per alias are read, then written)
        with LakehouseLock(self.lakehouse.root, self.lakehouse.env):
            return self._set_locked(alias, model, digest)

    def _set_locked(self, alias: str, model: Any, digest: str) -> tuple[dict[str, Any], bool]:
        from cxrlake.serving.inference_log import ensure_table

        rows = [r for r in self.history() if r["alias"] == alias]
        current = rows[-1] if rows else None
        if current is not None and current["model_sha256"] == digest:
            return current, False
        folder = os.path.join(self.lakehouse.catalog, "models", "files")
        os.makedirs(folder, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(model.name))
        target = os.path.join(folder, f"{safe}-v{model.version}-{digest[:12]}.onnx")
        if not os.path.isfile(target) or _sha256(target) != digest:
            partial = f"{target}.partial-{os.getpid()}"
            shutil.copyfile(model.path, partial)
            os.replace(partial, target)
        row = {
            "alias": alias,
            "version": (current["version"] + 1) if current else 1,
            "model_name": str(model.name),
            "model_version": str(model.version),
            "model_path": target,
            "model_sha256": digest,
            "previous_model_version": current["model_version"] if current else None,
            "set_at": dt.datetime.now(dt.timezone.utc),
        }
        ensure_table(self.lakehouse, MODEL_ALIASES)
        self.lakehouse.append(
            MODEL_ALIASES,
            pa.Table.from_pylist([row], schema=MODEL_ALIASES_SCHEMA),
            operation="set_alias",
        )
        return row, True


def set_mlflow_alias(
    model_name: str, alias: str, version: str, registry_uri: str | None = None
) -> None:
    """Move ``alias`` of the registered model ``model_name`` to ``version`` (Unity Catalog with
    ``registry_uri="databricks-uc"``)."""
    import mlflow

    if registry_uri:
        mlflow.set_registry_uri(registry_uri)
    mlflow.MlflowClient().set_registered_model_alias(model_name, alias, version)


def decide_comparison(
    payload: pa.Table, feedback: pa.Table, predictions: pa.Table, computed_at: dt.datetime
) -> pa.Table:
    """The comparison rows (`GOLD_COMPARISON`) of an inference table and the review tables: the
    rule `COMPARISON` in DuckDB (the Spark job runs the same SQL)."""
    import duckdb

    con = duckdb.connect()
    con.register("inference_rows", tables.inference_rows(payload))
    con.register("feedback", feedback.select(list(tables.COMPARISON_FEEDBACK_COLUMNS)))
    con.register("predictions", predictions.select(list(tables.COMPARISON_PREDICTION_COLUMNS)))
    rows = con.sql(tables.COMPARISON).to_arrow_table().to_pylist()
    return tables.comparison_rows(rows, computed_at)


def compute_comparison(lakehouse: str | os.PathLike[str], env: str = "dev") -> pa.Table:
    """Run the comparison rule over the local inference table and MERGE the result into
    ``gold.champion_challenger_comparison`` (one commit; re-runs update, never duplicate).
    Returns the rows."""
    from cxrlake.lakehouse.storage import Lakehouse
    from cxrlake.serving.inference_log import ensure_table

    lh = Lakehouse(lakehouse, env)
    table = decide_comparison(
        lh.read(tables.SERVING_PAYLOAD),
        lh.read(schemas.FEEDBACK, list(tables.COMPARISON_FEEDBACK_COLUMNS)),
        lh.read(schemas.PREDICTIONS, list(tables.COMPARISON_PREDICTION_COLUMNS)),
        dt.datetime.now(dt.timezone.utc),
    )
    from cxrlake.lakehouse.storage import LakehouseLock

    with LakehouseLock(lakehouse, env):
        ensure_table(lh, tables.COMPARISON_TABLE)
        lh.merge(tables.COMPARISON_TABLE, table, operation="serving_comparison")
    return table


def comparison_table_name(model_name: str, gold_schema: str = "gold") -> str:
    """``<catalog>.<gold>.champion_challenger_comparison`` of a Unity Catalog model name
    ``<catalog>.<schema>.<model>`` (names validated: they go into statement text)."""
    from cxrlake.spark.sql_files import validate_parameter

    catalog = model_name.split(".")[0]
    validate_parameter("catalog", catalog)
    validate_parameter("gold_schema", gold_schema)
    return f"{catalog}.{gold_schema}.{tables.COMPARISON_TABLE.name}"


def read_databricks_comparison(table: str, warehouse_id: str, client: Any = None) -> pa.Table:
    """The comparison table in Unity Catalog, read through a SQL warehouse with the Statement
    Execution API of the Databricks SDK (credentials from the environment / ~/.databrickscfg)."""
    from databricks.sdk.service.sql import StatementState

    if client is None:
        from databricks.sdk import WorkspaceClient

        client = WorkspaceClient()
    response = client.statement_execution.execute_statement(
        statement=f"SELECT * FROM {table} ORDER BY model_name, model_version",
        warehouse_id=warehouse_id,
        wait_timeout="50s",
    )
    if response.status.state != StatementState.SUCCEEDED:
        error = getattr(response.status, "error", None)
        raise RuntimeError(f"reading {table}: {response.status.state}: {error}")
    names = [c.name for c in response.manifest.schema.columns]
    rows = [dict(zip(names, values, strict=True)) for values in (response.result.data_array or [])]
    # JSON_ARRAY results are strings: convert to the table's types
    convert = {
        pa.int64(): int,
        pa.float64(): float,
        TS: lambda v: dt.datetime.fromisoformat(v.replace("Z", "+00:00")),
    }
    records = [
        {
            f.name: None if r.get(f.name) is None else convert.get(f.type, str)(r[f.name])
            for f in tables.GOLD_COMPARISON
        }
        for r in rows
    ]
    return pa.Table.from_pylist(records, schema=tables.GOLD_COMPARISON)


format_comparison = tables.format_comparison
