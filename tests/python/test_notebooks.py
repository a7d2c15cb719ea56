"""jobs/: Databricks notebook sources with a header documenting their widgets, valid Python,
widgets that match the job parameters of the bundle, logic in the package."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest
import yaml

from cxrlake.spark import jobs

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "jobs").glob("*.py"))
# jobs/train_model.py belongs to the training code; its header format is its own.
OWN_NOTEBOOKS = [p for p in NOTEBOOKS if p.name != "train_model.py"]
HEADER = "# Databricks notebook source"
SEPARATOR = "# COMMAND ----------"
WIDGET_KINDS = {"text", "dropdown", "combobox", "multiselect"}


def _calls(tree: ast.AST, method: str) -> list[ast.Call]:
    """Calls of ``dbutils.widgets.<method>(...)``."""
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == method
        and ast.unparse(node.func.value) == "dbutils.widgets"
    ]


def widgets(path: Path) -> list[str]:
    """Names of the widgets a notebook defines, in order."""
    tree = ast.parse(path.read_text())
    names = []
    for kind in WIDGET_KINDS:
        for call in _calls(tree, kind):
            names.append((call.lineno, ast.literal_eval(call.args[0])))
    return [name for _, name in sorted(names)]


def widgets_read(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {ast.literal_eval(call.args[0]) for call in _calls(tree, "get")}


def notebook_tasks() -> list[tuple[str, dict, Path]]:
    """(job key, job, notebook path) for every notebook task of the bundle's jobs."""
    out = []
    for file in sorted((REPO / "bundle" / "resources").glob("*.job.yml")):
        for key, job in yaml.safe_load(file.read_text())["resources"]["jobs"].items():
            for task in job["tasks"]:
                if "notebook_task" in task:
                    path = (file.parent / task["notebook_task"]["notebook_path"]).resolve()
                    out.append((key, job, path))
    return out


def test_there_are_notebooks_for_every_layer():
    names = {p.stem for p in NOTEBOOKS}
    assert {
        "bronze_ingest",
        "silver_transform",
        "gold_predict",
        "maintenance",
        "create_tables",
        "create_sql_function",
    } <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_source_format_and_python(path):
    text = path.read_text()
    assert text.startswith(HEADER + "\n")
    assert SEPARATOR in text
    ast.parse(text)


@pytest.mark.parametrize("path", OWN_NOTEBOOKS, ids=lambda p: p.name)
def test_header_documents_every_widget(path):
    header = path.read_text().split(SEPARATOR)[0]
    assert "# MAGIC %md" in header and "# MAGIC ## Widgets" in header
    documented = re.findall(r"^# MAGIC - `(\w+)`:", header, re.M)
    assert documented == widgets(path)


@pytest.mark.parametrize("path", OWN_NOTEBOOKS, ids=lambda p: p.name)
def test_widgets_are_validated_and_the_work_is_package_code(path):
    text = path.read_text()
    tree = ast.parse(text)
    assert widgets_read(path) == set(widgets(path))
    imports = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "cxrlake.spark" in imports
    called = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and ast.unparse(node.func.value) == "jobs"
    }
    assert any(name.startswith("validate_") for name in called)
    entry_points = called - {n for n in called if n.startswith("validate_")}
    assert len(entry_points) == 1 and all(hasattr(jobs, name) for name in called), called
    # no function or class definitions: logic lives in the package
    assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in ast.walk(tree))


def test_every_notebook_is_run_by_a_job_of_the_bundle():
    referenced = {path for _, _, path in notebook_tasks()}
    assert set(NOTEBOOKS) <= referenced
    assert referenced <= set(NOTEBOOKS)


def test_widgets_match_the_job_parameters():
    for key, job, path in notebook_tasks():
        if not path.exists():
            pytest.fail(f"job {key} runs {path}, which does not exist")
        params = {p["name"] for p in job.get("parameters", [])}
        provided = params | set(
            next(t for t in job["tasks"] if "notebook_task" in t)["notebook_task"].get(
                "base_parameters", {}
            )
        )
        assert set(widgets(path)) <= provided, (key, path.name)
    # every job parameter reaches a widget of one of the job's notebooks
    by_job: dict[str, set[str]] = {}
    params_of: dict[str, set[str]] = {}
    for key, job, path in notebook_tasks():
        by_job.setdefault(key, set()).update(widgets(path))
        params_of[key] = {p["name"] for p in job.get("parameters", [])}
    for key, params in params_of.items():
        assert params == by_job[key], key


def test_widget_defaults_are_valid_values_and_never_name_a_deployed_schema():
    for path in NOTEBOOKS:
        tree = ast.parse(path.read_text())
        defaults = {
            ast.literal_eval(c.args[0]): ast.literal_eval(c.args[1]) for c in _calls(tree, "text")
        }
        if "catalog" in defaults:
            jobs.validate_catalog(defaults["catalog"])
        # Schema names and paths inside them come from the job (the names the bundle deployed,
        # dev_<user>_bronze ... in development mode): a notebook default never spells them.
        for name, value in defaults.items():
            if name.endswith("_schema") or name.endswith("_path"):
                assert value == "", (path.name, name, value)
        if "retain_hours" in defaults:
            jobs.validate_retain_hours(defaults["retain_hours"])
        if "model" in defaults:
            assert jobs.validate_model(defaults["model"]) is None


def test_jobs_address_the_schemas_the_bundle_deployed():
    names = jobs.validate_deployment(
        "healthcare_catalog_dev",
        "dev_ana_bronze",
        "dev_ana_silver",
        "dev_ana_gold",
        "dev_ana_models",
        registered_model="dev_ana_pneumonia_classifier",
        deid_secret_scope="cxrlake-dev",
    )
    from cxrlake.medallion import schemas

    assert jobs.table_name(names, schemas.BRONZE) == (
        "healthcare_catalog_dev.dev_ana_bronze.kaggle_xray_metadata"
    )
    assert jobs.table_name(names, schemas.PREDICTIONS).startswith(
        "healthcare_catalog_dev.dev_ana_gold."
    )
    assert names.volume_path("bronze", "xray_images") == (
        "/Volumes/healthcare_catalog_dev/dev_ana_bronze/xray_images"
    )
    # development mode prefixes the registered model too: the job passes the deployed name
    assert names.model_name() == (
        "healthcare_catalog_dev.dev_ana_models.dev_ana_pneumonia_classifier"
    )
    assert names.secret_scope == "cxrlake-dev"
    without_model = jobs.validate_deployment("healthcare_catalog_dev", "b", "s", "g", "m")
    with pytest.raises(jobs.DeploymentError, match="registered_model"):
        without_model.model_name()
    with pytest.raises(jobs.JobParameterError, match="registered_model"):
        jobs.validate_deployment("healthcare_catalog_dev", "b", "s", "g", "m", "Bad-Name")
    with pytest.raises(jobs.JobParameterError, match="deid_secret_scope"):
        jobs.validate_deployment("healthcare_catalog_dev", "b", "s", "g", "m", None, "a b")
    # without a bundle, a bare catalog keeps the undecorated names
    assert jobs.table_name("healthcare_catalog_dev", schemas.BRONZE) == (
        "healthcare_catalog_dev.bronze.kaggle_xray_metadata"
    )
    for bad in ("", "Bronze", "dev-ana-bronze", "x; DROP"):
        with pytest.raises(jobs.JobParameterError, match="bronze_schema"):
            jobs.validate_deployment("healthcare_catalog_dev", bad, "s", "g", "m")


def test_setup_never_creates_what_the_bundle_owns():
    for name in jobs.TABLES_SQL:
        text = (REPO / "sql" / name).read_text().upper()
        assert "CREATE SCHEMA" not in text and "CREATE VOLUME" not in text, name


@pytest.mark.parametrize(
    ("validator", "value"),
    [
        (jobs.validate_catalog, "main"),
        (jobs.validate_catalog, "healthcare_catalog_dev; DROP"),
        (jobs.validate_model, "/Volumes/c/s/v/model.pt"),
        (jobs.validate_retain_hours, "24"),
        (jobs.validate_retain_hours, "a week"),
        (jobs.validate_principal, "a`b"),
    ],
)
def test_validators_reject_bad_widget_values(validator, value):
    with pytest.raises(jobs.JobParameterError):
        validator(value)


def test_volume_paths_must_stay_in_the_catalog():
    catalog = "healthcare_catalog_dev"
    ok = jobs.validate_volume_path("p", f"/Volumes/{catalog}/bronze/xray_images/", catalog)
    assert ok == f"/Volumes/{catalog}/bronze/xray_images"
    for bad in ("/Volumes/healthcare_catalog_prod/bronze/xray_images", "/tmp/x", "dbfs:/x"):
        with pytest.raises(jobs.JobParameterError):
            jobs.validate_volume_path("p", bad, catalog)


def test_merge_statement_is_keyed_and_insert_only_for_bronze():
    import sqlglot

    from cxrlake.medallion import schemas
    from cxrlake.spark.catalog import merge_statement

    target = jobs.table_name("healthcare_catalog_dev", schemas.BRONZE)
    sql = merge_statement(target, "updates", schemas.BRONZE.keys, update=False)
    assert sql == (
        "MERGE INTO healthcare_catalog_dev.bronze.kaggle_xray_metadata AS t USING updates AS s "
        "ON t.image_id <=> s.image_id AND t.content_sha256 <=> s.content_sha256 "
        "WHEN NOT MATCHED THEN INSERT *"
    )
    upsert = merge_statement("c.silver.xray_metadata", "u", ("image_id",), update=True)
    assert "WHEN MATCHED THEN UPDATE SET *" in upsert
    for statement in (sql, upsert):
        assert type(sqlglot.parse_one(statement, read="databricks")).__name__ == "Merge"


def test_newest_wheel_picks_the_latest_deployed_wheel(tmp_path):
    old = tmp_path / "cxrlake-0.1.0-cp310-abi3-manylinux_2_17_x86_64.whl"
    new = tmp_path / "cxrlake-0.1.0+20260101-cp310-abi3-manylinux_2_17_x86_64.whl"
    old.write_bytes(b"old")
    new.write_bytes(b"new")
    os.utime(old, (1_000_000, 1_000_000))
    assert jobs.newest_wheel(str(tmp_path / "cxrlake-*.whl")) == new
    with pytest.raises(jobs.JobParameterError, match="no wheel matches"):
        jobs.newest_wheel(str(tmp_path / "other-*.whl"))
    with pytest.raises(jobs.JobParameterError, match=r"\.whl"):
        jobs.newest_wheel(str(tmp_path / "*"))
