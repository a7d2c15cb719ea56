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

**Registration of a training run.** `log_and_register` logs a finished run of `cxrlake train`
(its ``metrics.json`` and ``model.onnx``) to MLflow and registers the version with an alias.
Locally the default store is ``sqlite:///<runs>/mlflow.db`` (outside the repo; ``mlruns/`` and
``mlflow.db`` are git-ignored anyway). On Databricks pass ``tracking_uri="databricks"`` and
``registry_uri="databricks-uc"``; the model is then registered as
``<catalog>.<models schema>.<name>`` (the names the bundle deploys in the target:
`cxrlake.spark.deployment.Deployment.model_name`) with the alias ``champion``. Unity Catalog's
registry only accepts model versions with a signature that has inputs and outputs
(https://docs.databricks.com/aws/en/machine-learning/manage-model-lifecycle/#train-and-register-unity-catalog-compatible-models),
so the version is the pyfunc of `cxrlake.serving.pyfunc` with its explicit signature (base64
image bytes in, the predict columns out); `model_signature` gives the ONNX tensors' signature
from a real run of the model on an input of its shape. Registration lives here, beside the
aliases, so that training never imports serving.

`compute_comparison` runs `cxrlake.medallion.serving.COMPARISON` over the local inference
table and MERGEs ``gold.champion_challenger_comparison``; `format_comparison` prints it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import onnxruntime as ort
import pyarrow as pa

import cxrlake
from cxrlake.medallion import schemas
from cxrlake.medallion import serving as tables
from cxrlake.medallion.schemas import TS
from cxrlake.spark.sql_files import validate_parameter

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient
    from mlflow.models import ModelSignature

    from cxrlake.model import Model

MODEL_ALIASES_SCHEMA = tables.MODEL_ALIASES_SCHEMA
MODEL_ALIASES = tables.MODEL_ALIASES
ALIASES = ("champion", "challenger")


class AliasRow(TypedDict):
    """One row of ``models.model_aliases``: an alias move."""

    alias: str
    version: int
    model_name: str
    model_version: str
    model_path: str
    model_sha256: str
    previous_model_version: str | None
    set_at: dt.datetime


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LocalRegistry:
    """The aliases of one local lakehouse (``models.model_aliases``)."""

    def __init__(self, lakehouse: str | os.PathLike[str], env: str = "dev") -> None:
        from cxrlake.lakehouse.storage import Lakehouse  # needs the 'local' extra

        self.lakehouse = Lakehouse(lakehouse, env)

    def history(self) -> list[AliasRow]:
        """Every alias move, by alias and version."""
        rows = self.lakehouse.read(MODEL_ALIASES).to_pylist()
        return sorted(rows, key=lambda r: (r["alias"], r["version"]))

    def get(self, alias: str) -> AliasRow | None:
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

    def set(self, alias: str, model_file: str | None) -> tuple[AliasRow, bool]:
        """Point ``alias`` at ``model_file`` (None: the shipped model). Returns (row in force,
        whether a row was written)."""
        if alias not in ALIASES:
            raise ValueError(f"alias must be one of {', '.join(ALIASES)}, got {alias!r}")
        from cxrlake.lakehouse.storage import LakehouseLock  # needs the 'local' extra

        model = cxrlake.Model(model_file)
        digest = _sha256(model.path)
        # one alias move at a time (versions 1, 2, ... per alias are read, then written)
        with LakehouseLock(self.lakehouse.root, self.lakehouse.env):
            return self._set_locked(alias, model, digest)

    def _set_locked(self, alias: str, model: Model, digest: str) -> tuple[AliasRow, bool]:
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
        row: AliasRow = {
            "alias": alias,
            "version": (current["version"] + 1) if current else 1,
            "model_name": str(model.name),
            "model_version": str(model.version),
            "model_path": target,
            "model_sha256": digest,
            "previous_model_version": current["model_version"] if current else None,
            "set_at": dt.datetime.now(dt.timezone.utc),
        }
        self.lakehouse.ensure(MODEL_ALIASES)
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
    import mlflow  # the 'serve' or 'train' extra

    if registry_uri:
        mlflow.set_registry_uri(registry_uri)
    mlflow.MlflowClient().set_registered_model_alias(model_name, alias, version)


def uc_model_name(env: str, name: str = "cxrlake_pneumonia", models_schema: str = "models") -> str:
    """Unity Catalog three-level name of the model for ``env`` (dev, pilot, prod); pass the
    deployed ``models_schema`` (``dev_<user>_models`` in development mode)."""
    if not env.isidentifier():
        raise ValueError(f"env must be an identifier such as dev/pilot/prod, got {env!r}")
    if not models_schema.isidentifier():
        raise ValueError(f"models_schema must be a schema name, got {models_schema!r}")
    return f"healthcare_catalog_{env}.{models_schema}.{name}"


def model_signature(model_path: str | os.PathLike[str]) -> ModelSignature:
    """MLflow signature (inputs and outputs) of an ONNX model, from one run on zeros of its input
    shape (batch dimension 1)."""
    from mlflow.models import infer_signature  # the 'serve' or 'train' extra

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
    example = np.zeros(shape, dtype=np.float32)
    outputs = session.run(None, {spec.name: example})
    names = [o.name for o in session.get_outputs()]
    return infer_signature({spec.name: example}, dict(zip(names, outputs, strict=True)))


def _flat_params(config: Mapping[str, object]) -> dict[str, str]:
    """A run's config as MLflow params: nested dicts flattened to ``key.sub``, values as text."""
    params = {}
    for key, value in config.items():
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                params[f"{key}.{sub}"] = str(sub_value)
        else:
            params[key] = str(value)
    return params


def _log_run_figures(summary: dict[str, Any], run_dir: Path) -> None:
    """Params, metrics and files of a finished training run into the active MLflow run."""
    import mlflow  # the 'serve' or 'train' extra

    validation = summary["validation"]
    scalar = {
        f"val_{k}": float(v)
        for k, v in validation.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    mlflow.log_params(_flat_params(summary["config"]))
    mlflow.log_params({"shipped_quantization": summary["shipped"]})
    mlflow.log_metrics(scalar)
    for kind, metrics in summary["candidates"].items():
        mlflow.log_metrics({f"{kind}_auc": metrics["auc"], f"{kind}_sens": metrics["sensitivity"]})
    mlflow.log_metrics(summary["torch_vs_onnxruntime"])
    for entry in summary["history"]:
        mlflow.log_metrics(
            {"train_loss": entry["train_loss"], "epoch_val_auc": entry["auc"]},
            step=entry["epoch"],
        )
    mlflow.log_artifact(str(run_dir / "metrics.json"))
    mlflow.log_artifact(str(run_dir / "model.onnx"), artifact_path="onnx_file")


def log_and_register(
    run_dir: str | os.PathLike[str],
    tracking_uri: str,
    experiment: str = "cxrlake-pneumonia",
    name: str = "cxrlake_pneumonia",
    registry_uri: str | None = None,
    alias: str = "champion",
    wheel: str | None = None,
) -> dict[str, str]:
    """Log params, metrics and the shipped ONNX file of ``run_dir``; register it as ``name``.

    Reads ``metrics.json`` and ``model.onnx`` written by ``cxrlake.training.train.finalize``.
    The registered model version gets the alias ``alias``. Returns ``run_id``, ``model_name``
    and ``model_version``.

    The version is the MLflow pyfunc of `cxrlake.serving.pyfunc` (signature: base64 image bytes
    in, the predict columns out) with the ONNX file as an artifact and ``wheel`` (default: the
    wheel cxrlake was installed from, `cxrlake.serving.pyfunc.installed_wheel`) as its only code,
    so Model Serving serves the version the gold job scores with.
    """
    import mlflow  # the 'serve' or 'train' extra

    from cxrlake.serving import pyfunc  # imports mlflow

    run_dir = Path(run_dir)
    with open(run_dir / "metrics.json") as handle:
        summary = json.load(handle)
    mlflow.set_tracking_uri(tracking_uri)
    # The registry URI is process-global in MLflow: without an explicit one, a URI set earlier in
    # the process (another registration, a notebook cell) would receive the model. Default to the
    # tracking URI, which is MLflow's own default for a fresh process.
    mlflow.set_registry_uri(registry_uri or tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_dir.name) as run:
        _log_run_figures(summary, run_dir)
        # The pyfunc (cxrlake.serving.pyfunc): Model Serving and `mlflow models serve` serve it,
        # and the gold job finds its ONNX file among the artifacts (model_source). The ONNX file
        # is one self-contained file (a few MB): what gold copies to the workers' volume.
        info = pyfunc.log_in_run(
            run_dir / "model.onnx", name="model", registered_model_name=name, wheel=wheel
        )
        version = str(info.registered_model_version)
        mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
        return {"run_id": run.info.run_id, "model_name": name, "model_version": version}


def decide_comparison(
    payload: pa.Table, feedback: pa.Table, predictions: pa.Table, computed_at: dt.datetime
) -> pa.Table:
    """The comparison rows (`GOLD_COMPARISON`) of an inference table and the review tables: the
    rule `COMPARISON` in DuckDB (the Spark job runs the same SQL)."""
    import duckdb  # needs the 'local' extra

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
    from cxrlake.lakehouse.storage import Lakehouse  # needs the 'local' extra

    lh = Lakehouse(lakehouse, env)
    table = decide_comparison(
        lh.read(tables.SERVING_PAYLOAD),
        lh.read(schemas.FEEDBACK, list(tables.COMPARISON_FEEDBACK_COLUMNS)),
        lh.read(schemas.PREDICTIONS, list(tables.COMPARISON_PREDICTION_COLUMNS)),
        dt.datetime.now(dt.timezone.utc),
    )
    from cxrlake.lakehouse.storage import LakehouseLock  # needs the 'local' extra

    with LakehouseLock(lakehouse, env):
        lh.ensure(tables.COMPARISON_TABLE)
        lh.merge(tables.COMPARISON_TABLE, table, operation="serving_comparison")
    return table


def comparison_table_name(model_name: str, gold_schema: str = "gold") -> str:
    """``<catalog>.<gold>.champion_challenger_comparison`` of a Unity Catalog model name
    ``<catalog>.<schema>.<model>`` (names validated: they go into statement text)."""
    catalog = model_name.split(".")[0]
    validate_parameter("catalog", catalog)
    validate_parameter("gold_schema", gold_schema)
    return f"{catalog}.{gold_schema}.{tables.COMPARISON_TABLE.name}"


def read_databricks_comparison(
    table: str, warehouse_id: str, client: WorkspaceClient | None = None
) -> pa.Table:
    """The comparison table in Unity Catalog, read through a SQL warehouse with the Statement
    Execution API of the Databricks SDK (credentials from the environment / ~/.databrickscfg)."""
    from databricks.sdk.service.sql import StatementState  # Databricks SDK: optional

    if client is None:
        from databricks.sdk import WorkspaceClient  # Databricks SDK: optional

        client = WorkspaceClient()
    response = client.statement_execution.execute_statement(
        statement=f"SELECT * FROM {table} ORDER BY model_name, model_version",
        warehouse_id=warehouse_id,
        wait_timeout="50s",
    )
    status, manifest, result = response.status, response.manifest, response.result
    if status is None or status.state != StatementState.SUCCEEDED:
        error = getattr(status, "error", None)
        raise RuntimeError(f"reading {table}: {status.state if status else None}: {error}")
    schema = manifest.schema if manifest else None
    names = [c.name for c in (schema.columns if schema else None) or []]
    rows = [
        dict(zip(names, values, strict=True)) for values in (result and result.data_array) or []
    ]
    # JSON_ARRAY results are strings: convert to the table's types
    convert: dict[pa.DataType, Callable[[str], object]] = {
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
