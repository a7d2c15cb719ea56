"""The model as an MLflow pyfunc: what ``mlflow models serve`` and Databricks Model Serving load.

Input: a DataFrame with the column ``content``, each image's bytes as base64 (as JSON carries
them: ``{"dataframe_split": {"columns": ["content"], "data": [["/9j/4AAQ..."]]}}``). Output: one
row per input row with the columns of `cxrlake.predict` (probability, predicted_label,
label_name, model_name, model_version, error, and any column a later version adds), the values
`cxrlake serve` answers. A row that is not base64 or not an image gets its ``error``.

The logged model holds the ONNX file as an artifact and needs no code but the cxrlake wheel:
`log_model` puts the wheel into the model's ``code/`` folder (``code_paths``) and names it as the
pip requirement ``code/<wheel>``, which MLflow's environment builder and Model Serving resolve
against the model directory
(https://docs.databricks.com/aws/en/machine-learning/model-serving/private-libraries-model-serving).
The signature (`signature`) is what Unity Catalog requires of a registered version and what
``ai_query`` reads the return type from.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow as pa
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import ColSpec, Schema, TensorSpec

import cxrlake
from cxrlake.serving.protocol import INPUT_COLUMN, decode_contents, prediction_rows, warmup_png

MODEL_ARTIFACT = "onnx_model"

_ARROW_TO_MLFLOW = {
    pa.float64(): "double",
    pa.float32(): "float",
    pa.int32(): "integer",
    pa.int64(): "long",
    pa.bool_(): "boolean",
    pa.string(): "string",
    pa.large_string(): "string",
    pa.binary(): "binary",
}


class PneumoniaModel(PythonModel):
    """`cxrlake.predict` over base64 image bytes (see the module docstring)."""

    def load_context(self, context: PythonModelContext) -> None:
        self._model = cxrlake.Model(context.artifacts[MODEL_ARTIFACT])
        empty = cxrlake.predict(pa.array([], pa.binary()), model=self._model)
        self._columns = empty.schema.names

    # No type hints on purpose: MLflow infers a schema from them; the signature is explicit.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        if isinstance(model_input, pd.DataFrame):
            values = model_input[INPUT_COLUMN].tolist()
        elif isinstance(model_input, dict):
            values = list(model_input[INPUT_COLUMN])
        else:
            values = list(model_input)
        images, errors, _ = decode_contents(values)
        good = [image for image in images if image is not None]
        batch = cxrlake.predict(pa.array(good, pa.binary()), model=self._model)
        rows = prediction_rows(
            self._columns,
            batch.to_pylist(),
            errors,
            str(self._model.name),
            str(self._model.version),
        )
        # object columns keep ints as ints and NULL as None in the JSON answer
        return pd.DataFrame(
            {name: pd.Series([row[name] for row in rows], dtype=object) for name in self._columns}
        )


def signature(model_path: str | os.PathLike[str] | None = None) -> ModelSignature:
    """Input ``content`` (string, base64 bytes); outputs the columns of `cxrlake.predict`."""
    schema = cxrlake.predict(pa.array([], pa.binary()), model=cxrlake.Model(model_path)).schema
    outputs: list[ColSpec | TensorSpec] = [
        ColSpec(_ARROW_TO_MLFLOW.get(f.type, "string"), f.name) for f in schema
    ]
    return ModelSignature(inputs=Schema([ColSpec("string", INPUT_COLUMN)]), outputs=Schema(outputs))


def input_example() -> pd.DataFrame:
    """One row: a small generated grey PNG (no patient image), base64."""

    return pd.DataFrame({INPUT_COLUMN: [base64.b64encode(warmup_png()).decode()]})


def _requirements(wheel: str | None) -> tuple[list[str], list[str] | None]:
    """pip requirements and code_paths: the wheel from ``code/``, or the installed cxrlake."""
    pins = [f"mlflow=={mlflow.__version__}", "pandas"]
    if wheel is not None:
        return [f"code/{Path(wheel).name}", *pins], [str(wheel)]
    try:
        return [f"cxrlake=={version('cxrlake')}", *pins], None
    except PackageNotFoundError:
        return ["cxrlake", *pins], None


def save_model(
    path: str | os.PathLike[str], model_path: str | None = None, wheel: str | None = None
) -> None:
    """Write the pyfunc to the folder ``path`` (``mlflow models serve -m path``)."""
    onnx_file = cxrlake.Model(model_path).path
    requirements, code_paths = _requirements(wheel)
    mlflow.pyfunc.save_model(
        str(path),
        python_model=PneumoniaModel(),
        artifacts={MODEL_ARTIFACT: onnx_file},
        signature=signature(onnx_file),
        input_example=input_example(),
        pip_requirements=requirements,
        code_paths=code_paths,
    )


def installed_wheel() -> str | None:
    """The wheel file the running cxrlake was installed from, when pip recorded one that still
    exists (``direct_url.json``: a Databricks job library installs the bundle's wheel this way);
    None for an editable or index install."""
    try:
        text = distribution("cxrlake").read_text("direct_url.json")
    except PackageNotFoundError:
        return None
    url = (json.loads(text) if text else {}).get("url", "")
    if not (url.startswith("file://") and url.endswith(".whl")):
        return None
    path = urllib.parse.unquote(urllib.parse.urlparse(url).path)
    return path if os.path.isfile(path) else None


def log_in_run(
    onnx_file: str | os.PathLike[str],
    name: str = "model",
    registered_model_name: str | None = None,
    wheel: str | None = None,
) -> ModelInfo:
    """Log the pyfunc of ``onnx_file`` in the active MLflow run (and register it); returns
    MLflow's ModelInfo. ``wheel`` None: `installed_wheel`, else the installed version by name."""
    requirements, code_paths = _requirements(wheel or installed_wheel())
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=PneumoniaModel(),
        artifacts={MODEL_ARTIFACT: str(onnx_file)},
        signature=signature(onnx_file),
        input_example=input_example(),
        pip_requirements=requirements,
        code_paths=code_paths,
        registered_model_name=registered_model_name,
    )


def log_model(
    model_path: str | None = None,
    wheel: str | None = None,
    registered_model_name: str | None = None,
    alias: str | None = None,
    name: str = "pyfunc",
) -> dict[str, str]:
    """Log the pyfunc in the active MLflow run (one is started when none is) and, with
    ``registered_model_name``, register it (Unity Catalog: ``catalog.schema.model`` with
    ``mlflow.set_registry_uri("databricks-uc")``) and move ``alias`` to the new version.
    Pass the Linux x86_64 ``wheel`` for Databricks Model Serving. Returns the model URI, and
    the registered name and version."""
    onnx_file = cxrlake.Model(model_path).path
    active = mlflow.active_run()
    started = active is None
    run = mlflow.start_run() if active is None else active
    try:
        info = log_in_run(onnx_file, name, registered_model_name, wheel)
    finally:
        if started:
            mlflow.end_run()
    out = {"model_uri": info.model_uri, "run_id": run.info.run_id}
    if registered_model_name:
        version = str(info.registered_model_version)
        if alias:
            mlflow.MlflowClient().set_registered_model_alias(registered_model_name, alias, version)
        out.update(model_name=registered_model_name, model_version=version)
    return out
