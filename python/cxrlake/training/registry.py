"""MLflow logging and model registration of a finished training run.

Locally the default store is ``sqlite:///<runs>/mlflow.db`` (outside the repo; ``mlruns/`` and
``mlflow.db`` are git-ignored anyway). On Databricks pass ``tracking_uri="databricks"`` and
``registry_uri="databricks-uc"``; the model is then registered as
``<catalog>.<models schema>.<name>`` (the names the bundle deploys in the target:
`cxrlake.spark.deployment.Deployment.model_name`) with the alias ``champion``.

Unity Catalog's registry only accepts model versions with a signature that has inputs and
outputs (https://docs.databricks.com/aws/en/machine-learning/manage-model-lifecycle/#train-and-register-unity-catalog-compatible-models),
so the version is the pyfunc of `cxrlake.serving.pyfunc` with its explicit signature (base64
image bytes in, the predict columns out); `model_signature` gives the ONNX tensors' signature
from a real run of the model on an input of its shape.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def uc_model_name(env: str, name: str = "cxrlake_pneumonia", models_schema: str = "models") -> str:
    """Unity Catalog three-level name of the model for ``env`` (dev, pilot, prod); pass the
    deployed ``models_schema`` (``dev_<user>_models`` in development mode)."""
    if not env.isidentifier():
        raise ValueError(f"env must be an identifier such as dev/pilot/prod, got {env!r}")
    if not models_schema.isidentifier():
        raise ValueError(f"models_schema must be a schema name, got {models_schema!r}")
    return f"healthcare_catalog_{env}.{models_schema}.{name}"


def model_signature(model_path: str | os.PathLike[str]) -> object:
    """MLflow signature (inputs and outputs) of an ONNX model, from one run on zeros of its input
    shape (batch dimension 1)."""
    import numpy as np
    import onnxruntime as ort
    from mlflow.models import infer_signature

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
    example = np.zeros(shape, dtype=np.float32)
    outputs = session.run(None, {spec.name: example})
    names = [o.name for o in session.get_outputs()]
    return infer_signature({spec.name: example}, dict(zip(names, outputs, strict=True)))


def _flat_params(config: dict) -> dict[str, str]:
    params = {}
    for key, value in config.items():
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                params[f"{key}.{sub}"] = str(sub_value)
        else:
            params[key] = str(value)
    return params


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

    Reads ``metrics.json`` and ``model.onnx`` written by ``finalize``. The registered model
    version gets the alias ``alias``. Returns ``run_id``, ``model_name`` and ``model_version``.

    The version is the MLflow pyfunc of `cxrlake.serving.pyfunc` (signature: base64 image bytes
    in, the predict columns out) with the ONNX file as an artifact and ``wheel`` (default: the
    wheel cxrlake was installed from, `cxrlake.serving.pyfunc.installed_wheel`) as its only code,
    so Model Serving serves the version the gold job scores with.
    """
    import mlflow

    from cxrlake.serving import pyfunc

    run_dir = Path(run_dir)
    with open(run_dir / "metrics.json") as handle:
        summary = json.load(handle)
    mlflow.set_tracking_uri(tracking_uri)
    # The registry URI is process-global in MLflow: without an explicit one, a URI set earlier in
    # the process (another registration, a notebook cell) would receive the model. Default to the
    # tracking URI, which is MLflow's own default for a fresh process.
    mlflow.set_registry_uri(registry_uri or tracking_uri)
    mlflow.set_experiment(experiment)
    validation = summary["validation"]
    scalar = {
        f"val_{k}": float(v)
        for k, v in validation.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    with mlflow.start_run(run_name=run_dir.name) as run:
        mlflow.log_params(_flat_params(summary["config"]))
        mlflow.log_params({"shipped_quantization": summary["shipped"]})
        mlflow.log_metrics(scalar)
        for kind, metrics in summary["candidates"].items():
            mlflow.log_metrics(
                {f"{kind}_auc": metrics["auc"], f"{kind}_sens": metrics["sensitivity"]}
            )
        mlflow.log_metrics(summary["torch_vs_onnxruntime"])
        for entry in summary["history"]:
            mlflow.log_metrics(
                {"train_loss": entry["train_loss"], "epoch_val_auc": entry["auc"]},
                step=entry["epoch"],
            )
        mlflow.log_artifact(str(run_dir / "metrics.json"))
        mlflow.log_artifact(str(run_dir / "model.onnx"), artifact_path="onnx_file")
        # The pyfunc (cxrlake.serving.pyfunc): Model Serving and `mlflow models serve` serve it,
        # and the gold job finds its ONNX file among the artifacts (model_source). The ONNX file
        # is one self-contained file (a few MB): what gold copies to the workers' volume.
        info = pyfunc.log_in_run(
            run_dir / "model.onnx", name="model", registered_model_name=name, wheel=wheel
        )
        version = str(info.registered_model_version)
        mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
        return {"run_id": run.info.run_id, "model_name": name, "model_version": version}
