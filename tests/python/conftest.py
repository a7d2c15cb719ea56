"""Shared pytest fixtures: the real images, the shipped model and a tiny generated model.

Keep fixtures here generic (used by several suites); suite-specific ones live in their module.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# tests/fixtures holds generators (make_tiny_model.py) importable by every suite.
sys.path.insert(0, str(REPO / "tests" / "fixtures"))


def _delta_on_the_driver_class_path() -> None:
    """Every Spark session of this process runs in the JVM the first one starts: put Delta's jars
    (`make databricks-jars`) on its class path, so that `delta_spark` works whichever suite
    starts Spark first. Without the jars, `delta_spark` fails saying what to run."""
    try:
        from cxrlake.spark import local_runtime

        os.environ.setdefault(
            "PYSPARK_SUBMIT_ARGS", local_runtime.submit_args(local_runtime.delta_jars())
        )
    except Exception:  # noqa: BLE001 - no jars or no pyspark: delta_spark reports it
        pass


_delta_on_the_driver_class_path()


@pytest.fixture(scope="module")
def delta_spark(tmp_path_factory: pytest.TempPathFactory):
    """One PySpark session per module with Delta Lake (`cxrlake.spark.local_runtime`, local[2],
    Spark's in-memory catalog; managed Delta tables in a temporary warehouse), for the suites
    that write real Delta tables through the Spark jobs. Give each test its own schema names.
    Stopped at the end of the module, as the other suites' sessions are."""
    from cxrlake.spark import local_runtime

    spark = local_runtime.session(
        tmp_path_factory.mktemp("delta-spark"), hive=False, app_name="cxrlake-tests-delta"
    )
    yield spark
    spark.stop()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (env ``CXRLAKE_SHARED_DATA`` overrides); fails when absent."""
    root = Path(os.environ.get("CXRLAKE_SHARED_DATA", REPO.parent / "shared" / "data"))
    assert root.is_dir(), f"shared data not found at {root} (set CXRLAKE_SHARED_DATA)"
    return root


@pytest.fixture(scope="session")
def fullres_paths(shared_data: Path) -> list[str]:
    """The 200 full-resolution JPEGs (NORMAL then PNEUMONIA), sorted."""
    paths = sorted(str(p) for p in (shared_data / "chest_xray_fullres").glob("*/*.jpeg"))
    assert len(paths) >= 100, "expected the full-resolution images"
    return paths


@pytest.fixture(scope="session")
def train_paths(shared_data: Path) -> list[str]:
    """The 224x224 training JPEGs, sorted."""
    return sorted(str(p) for p in (shared_data / "chest_xray" / "train").glob("*/*.jpeg"))


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny untrained model following the model contract (64x64 input, with embedding)."""
    from make_tiny_model import write_model

    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    write_model(path, size=64, name="tiny-test-model", version="9.9.9", threshold=0.5)
    return str(path)


@pytest.fixture(scope="session")
def shipped_model_path() -> str:
    """The model shipped in the package (trained model or development stand-in)."""
    import cxrlake

    path = cxrlake.default_model_path()
    assert Path(path).is_file(), f"shipped model missing: {path}"
    return path
