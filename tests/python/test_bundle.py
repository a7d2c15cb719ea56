"""The Databricks Asset Bundle in bundle/: schema-valid for every target, paths exist, and the
checker itself catches what it claims to catch."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import sqlglot
import yaml
from sqlglot import exp

from cxrlake.lakehouse import schemas

REPO = Path(__file__).resolve().parents[2]
# tools/bundle_check.py is a development tool, not part of the installed package.
sys.path.insert(0, str(REPO / "tools"))
import bundle_check  # noqa: E402

# ../shared/data holds the images; the official bundle schema sits next to it.
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SCHEMA = (
    Path(os.environ.get("CXRLAKE_SHARED_DATA", SHARED_DATA)).parent
    / "databricks"
    / "bundle_jsonschema.json"
)
TARGETS = ["dev", "pilot", "prod"]


@pytest.fixture(scope="module")
def resolved() -> dict:
    return bundle_check.validate(REPO / "bundle", SCHEMA, TARGETS)


def _copy_repo(tmp_path: Path) -> Path:
    """The parts of the repository the bundle references, in a scratch directory."""
    for name in ("bundle", "jobs", "sql"):
        shutil.copytree(REPO / name, tmp_path / name)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _edit_yaml(path: Path, edit) -> None:
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_every_target_validates_and_gets_its_catalog(resolved):
    assert set(resolved) == set(TARGETS)
    for target, config in resolved.items():
        catalog = f"healthcare_catalog_{target}"
        resources = config["resources"]
        assert {s["name"] for s in resources["schemas"].values()} == {
            "bronze",
            "silver",
            "gold",
            "models",
        }
        for kind in ("schemas", "volumes", "registered_models"):
            for spec in resources[kind].values():
                assert spec["catalog_name"] == catalog, (target, kind, spec)
        params = {p["name"]: p["default"] for p in resources["jobs"]["bronze_ingest"]["parameters"]}
        assert params["catalog"] == catalog
        assert params["source_path"] == f"/Volumes/{catalog}/bronze/xray_images"
        assert resources["dashboards"]["cxrlake_overview"]["dataset_catalog"] == catalog


def test_targets_modes_root_paths_and_permissions():
    document = bundle_check.load_bundle(REPO / "bundle").document
    targets = document["targets"]
    assert targets["dev"]["mode"] == "development" and targets["dev"]["default"] is True
    for name in ("pilot", "prod"):
        assert targets[name]["mode"] == "production"
        assert targets[name]["workspace"]["root_path"].startswith("/Workspace/")
        assert {p["level"] for p in targets[name]["permissions"]} >= {"CAN_MANAGE", "CAN_VIEW"}


def test_wheel_artifact_is_a_portable_maturin_build(resolved):
    artifact = resolved["prod"]["artifacts"]["cxrlake_wheel"]
    assert artifact["type"] == "whl"
    for flag in ("maturin build", "--zig", "--compatibility manylinux2014", "--out dist"):
        assert flag in artifact["build"]
    assert (REPO / "bundle" / artifact["path"] / "pyproject.toml").is_file()


def test_every_notebook_task_installs_the_wheel_on_a_cluster_with_the_spark_tips(resolved):
    config = resolved["prod"]
    for job_key, job in config["resources"]["jobs"].items():
        clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job.get("job_clusters", [])}
        for task in job["tasks"]:
            if "notebook_task" not in task:
                assert "run_job_task" in task, (job_key, task["task_key"])
                continue
            assert {"whl": "../../dist/*.whl"} in task["libraries"], (job_key, task["task_key"])
            cluster = clusters[task["job_cluster_key"]]
            assert isinstance(cluster["num_workers"], int)  # complex variable resolved, typed
            if job_key != "train_model":
                conf = cluster["spark_conf"]
                assert conf["spark.sql.files.maxPartitionBytes"] == "32m"
                assert conf["spark.sql.execution.arrow.maxRecordsPerBatch"] == "64"
                assert cluster["spark_env_vars"]["CXRLAKE_NUM_THREADS"] == "1"


def test_schemas_have_grants_and_the_pipeline_chains_the_layer_jobs(resolved):
    resources = resolved["dev"]["resources"]
    for spec in resources["schemas"].values():
        assert spec["grants"] and all(g["privileges"] for g in spec["grants"])
    chain = resources["jobs"]["medallion_pipeline"]["tasks"]
    assert [t["run_job_task"]["job_id"] for t in chain] == [
        "${resources.jobs.bronze_ingest.id}",
        "${resources.jobs.silver_transform.id}",
        "${resources.jobs.gold_predict.id}",
    ]
    setup = resources["jobs"]["setup"]["tasks"]
    assert setup[1]["notebook_task"]["notebook_path"].endswith("create_sql_function.py")


def _dashboard() -> dict:
    return json.loads((REPO / "bundle" / "src" / "cxrlake_overview.lvdash.json").read_text())


def test_dashboard_datasets_query_existing_tables_and_columns():
    tables = {spec.qualified_name: spec.arrow_schema.names for spec in schemas.TABLES}
    tables[schemas.DATASET_SUMMARY_VIEW] = [
        e.alias_or_name
        for e in sqlglot.parse_one(schemas.DATASET_SUMMARY_SQL, read="duckdb").expressions
    ]
    gold_datasets = 0
    for dataset in _dashboard()["datasets"]:
        query = sqlglot.parse_one("".join(dataset["queryLines"]), read="databricks")
        used = [f"{t.db}.{t.name}" for t in query.find_all(exp.Table)]
        assert len(used) == 1 and used[0] in tables, (dataset["name"], used)
        gold_datasets += used[0].startswith("gold.")
        aliases = {e.alias for e in query.expressions if e.alias}
        for column in query.find_all(exp.Column):
            assert column.name in tables[used[0]] or column.name in aliases, (
                dataset["name"],
                column.name,
            )
    assert gold_datasets >= 3


def test_dashboard_widgets_use_fields_of_their_datasets():
    dash = _dashboard()
    datasets = {d["name"] for d in dash["datasets"]}
    for item in dash["pages"][0]["layout"]:
        widget = item["widget"]
        query = widget["queries"][0]["query"]
        assert query["datasetName"] in datasets
        fields = {f["name"] for f in query["fields"]}
        encodings = widget["spec"]["encodings"]
        used = [c["fieldName"] for c in encodings.get("columns", [])] + [
            e["fieldName"] for k, e in encodings.items() if k != "columns"
        ]
        assert used and set(used) <= fields, widget["name"]


def test_checker_reports_a_property_the_schema_does_not_allow(tmp_path):
    repo = _copy_repo(tmp_path)
    _edit_yaml(
        repo / "bundle" / "resources" / "gold.schema.yml",
        lambda d: d["resources"]["schemas"]["gold"].update(retention_days=7),
    )
    with pytest.raises(bundle_check.BundleError, match="retention_days"):
        bundle_check.validate(repo / "bundle", SCHEMA, TARGETS)


def test_checker_reports_a_complex_variable_of_the_wrong_shape(tmp_path):
    repo = _copy_repo(tmp_path)

    def edit(d):
        d["variables"]["image_cluster"]["default"]["num_workers"] = "two"

    _edit_yaml(repo / "bundle" / "databricks.yml", edit)
    with pytest.raises(bundle_check.BundleError, match="num_workers"):
        bundle_check.validate(repo / "bundle", SCHEMA, ["prod"])


def test_checker_reports_missing_notebooks_and_dashboards(tmp_path):
    repo = _copy_repo(tmp_path)
    (repo / "jobs" / "gold_predict.py").unlink()
    (repo / "bundle" / "src" / "cxrlake_overview.lvdash.json").write_text("{not json")
    with pytest.raises(bundle_check.BundleError) as err:
        bundle_check.validate(repo / "bundle", SCHEMA, TARGETS)
    assert "gold_predict.py': notebook not found" in str(err.value)
    assert "invalid JSON" in str(err.value)


def test_checker_reports_undeclared_variables_and_unknown_resources(tmp_path):
    repo = _copy_repo(tmp_path)

    def edit(d):
        job = d["resources"]["jobs"]["medallion_pipeline"]
        job["tasks"][0]["run_job_task"]["job_id"] = "${resources.jobs.no_such_job.id}"
        job["parameters"][0]["default"] = "${var.no_such_variable}"

    _edit_yaml(repo / "bundle" / "resources" / "medallion_pipeline.job.yml", edit)
    with pytest.raises(bundle_check.BundleError) as err:
        bundle_check.validate(repo / "bundle", SCHEMA, ["dev"])
    assert "no_such_job" in str(err.value) and "no_such_variable" in str(err.value)


def test_target_merge_overrides_base_as_the_cli_does():
    document = {
        "variables": {"catalog": {"default": "healthcare_catalog_dev"}, "n": {"default": 1}},
        "workspace": {"host": "https://x", "root_path": "/a"},
        "resources": {"jobs": {"j": {"name": "${var.catalog}", "max_concurrent_runs": "${var.n}"}}},
        "targets": {
            "prod": {
                "mode": "production",
                "workspace": {"root_path": "/b"},
                "variables": {"catalog": "healthcare_catalog_prod", "n": 3},
            }
        },
    }
    config = bundle_check.interpolate_variables(bundle_check.target_config(document, "prod"))
    assert config["workspace"] == {"host": "https://x", "root_path": "/b"}
    assert config["resources"]["jobs"]["j"] == {
        "name": "healthcare_catalog_prod",
        "max_concurrent_runs": 3,
    }
    assert "targets" not in config and "mode" not in config


def test_command_line_entry_point(capsys):
    assert bundle_check.main(["--bundle", str(REPO / "bundle"), "--schema", str(SCHEMA)]) == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines()] == TARGETS
