"""What runs on Databricks beside the Spark transforms: the slim runtime dependencies of the
wheel, the registered champion model gold scores with, and the model signature Unity Catalog's
registry requires. Real MLflow (sqlite registry), real ONNX models, real images."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import tomllib

import cxrlake
from cxrlake.serving import registry
from cxrlake.spark import model_source

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("CXRLAKE_SHARED_DATA", REPO.parent / "shared" / "data"))
IMAGES = (
    sorted((DATA / "chest_xray" / "train" / "PNEUMONIA").iterdir())[:2]
    + sorted((DATA / "chest_xray" / "train" / "NORMAL").iterdir())[:2]
)
UC_NAME = "healthcare_catalog_dev.dev_ana_models.pneumonia_classifier"


def test_runtime_dependencies_are_what_workers_and_the_sql_udf_need():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].strip() for d in project["dependencies"]}
    assert names == {"pyarrow", "numpy", "onnxruntime"}
    local = {d.split(">")[0].strip() for d in project["optional-dependencies"]["local"]}
    assert {"deltalake", "duckdb", "tqdm"} <= local


def test_scoring_code_runs_without_the_local_engine_packages():
    """A Spark worker or a SQL-warehouse UDF sandbox has only the slim runtime: importing and
    running the scoring code must not need deltalake, duckdb or tqdm."""
    code = f"""
import sys
for name in ("deltalake", "duckdb", "tqdm"):
    sys.modules[name] = None  # any import of them raises ImportError
import pandas as pd
import cxrlake
from cxrlake.spark import deployment, jobs, model_source, sql_files, udfs, warehouse_udf
series = pd.Series([open({str(IMAGES[0])!r}, "rb").read()])
import json
(out,) = list(warehouse_udf.predict_handler(iter([(series,)])))
row = json.loads(out[0])
assert row["error"] is None, row
print(round(row["probability"], 6))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    want = cxrlake.predict([str(IMAGES[0])]).column("probability")[0].as_py()
    assert float(result.stdout.strip()) == pytest.approx(want, abs=1e-5)


def test_stamped_model_scores_identically_and_names_its_registry_version(tmp_path):
    shipped = Path(cxrlake.default_model_path())
    stamped = tmp_path / "champion.onnx"
    stamped.write_bytes(model_source.stamp_identity(shipped.read_bytes(), UC_NAME, "7"))
    model = cxrlake.Model(str(stamped))
    assert (model.name, model.version) == (UC_NAME, "7")
    assert model.threshold == cxrlake.Model().threshold
    paths = pa.array([str(p) for p in IMAGES])
    before = cxrlake.predict(paths).to_pylist()
    after = cxrlake.predict(paths, model=model).to_pylist()
    assert [r["probability"] for r in after] == [r["probability"] for r in before]
    assert {(r["model_name"], r["model_version"]) for r in after} == {(UC_NAME, "7")}
    # stamping twice replaces the entries (no duplicate keys)
    again = model_source.stamp_identity(stamped.read_bytes(), UC_NAME, "8")
    assert len(again) == len(stamped.read_bytes())


@pytest.fixture
def registry_uri(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def _run_dir(tmp_path: Path) -> Path:
    """A finished training run as `finalize` leaves it (the shipped model and its summary)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model.onnx").write_bytes(Path(cxrlake.default_model_path()).read_bytes())
    summary = {
        "config": {"size": 160, "epochs": 4},
        "shipped": "int8",
        "validation": {"auc": 0.99, "sensitivity": 0.98, "threshold": 0.5},
        "candidates": {"int8": {"auc": 0.99, "sensitivity": 0.98}},
        "torch_vs_onnxruntime": {"max_abs_diff": 0.001},
        "history": [{"epoch": 1, "train_loss": 0.3, "auc": 0.95}],
    }
    (run_dir / "metrics.json").write_text(json.dumps(summary))
    return run_dir


# Third-party noise of MLflow's sqlite store (SQLAlchemy deprecations, its own type hints).
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_gold_scores_with_the_registered_champion_else_the_shipped_model(tmp_path, registry_uri):
    import mlflow

    client = mlflow.MlflowClient()
    dest = tmp_path / "volume" / "models"
    # nothing registered yet: the shipped model
    source = model_source.resolve_champion(UC_NAME, dest, registry_uri=None, client=client)
    assert source.path is None and "shipped model" in source.reason
    # registered (with the signature UC requires) and aliased champion: that version
    result = registry.log_and_register(
        _run_dir(tmp_path), tracking_uri=registry_uri, registry_uri=registry_uri, name=UC_NAME
    )
    info = mlflow.models.get_model_info(f"models:/{UC_NAME}/{result['model_version']}")
    assert info.signature is not None
    assert info.signature.inputs is not None and info.signature.outputs is not None
    # the version is the pyfunc Model Serving serves: base64 bytes in, the predict columns out
    import pandas as pd

    assert info.signature.inputs.input_names() == ["content"]
    served = mlflow.pyfunc.load_model(f"models:/{UC_NAME}/{result['model_version']}")
    content = base64.b64encode(Path(IMAGES[0]).read_bytes()).decode()
    answer = served.predict(pd.DataFrame({"content": [content]})).to_dict("records")[0]
    expected = cxrlake.predict([str(IMAGES[0])]).to_pylist()[0]
    assert answer["probability"] == expected["probability"]
    source = model_source.resolve_champion(UC_NAME, dest, registry_uri=None, client=client)
    assert source.version == result["model_version"] == "1"
    assert Path(source.path).parent == dest and not list(dest.glob("*.partial"))
    model = cxrlake.Model(source.path)
    assert (model.name, model.version) == (UC_NAME, "1")
    rows = cxrlake.predict([str(IMAGES[0])], model=model).to_pylist()
    assert (rows[0]["model_name"], rows[0]["model_version"]) == (UC_NAME, "1")


def test_registry_errors_other_than_not_found_fail_the_job(tmp_path):
    class Denied(Exception):
        error_code = "PERMISSION_DENIED"

    class Client:
        def get_model_version_by_alias(self, name, alias):
            raise Denied(f"User does not have EXECUTE on {name}")

    with pytest.raises(Denied):
        model_source.resolve_champion(UC_NAME, tmp_path, registry_uri=None, client=Client())


def test_model_signature_has_inputs_and_outputs_of_the_onnx_model():
    signature = registry.model_signature(cxrlake.default_model_path())
    model = cxrlake.Model()
    (tensor,) = signature.inputs.inputs
    assert tuple(tensor.shape[1:]) == model.input_shape
    assert signature.outputs is not None and len(signature.outputs.inputs) >= 1
