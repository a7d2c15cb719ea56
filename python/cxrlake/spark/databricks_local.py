"""``make databricks-local``: the bundle's job graph for the dev target, run on this machine.

The notebooks of ``jobs/`` are executed top to bottom, cell by cell, as a job cluster runs them,
with the job parameters resolved from ``bundle/resources/*.job.yml`` for the ``dev`` target
(`BundleParameters`), on PySpark ``local[2]`` with Delta Lake (`cxrlake.spark.local_runtime`).
Only ``dbutils.widgets`` and ``dbutils.secrets`` are stood in for (`DBUtils`). What ``bundle
deploy`` would create is made first: the schemas (``sql/01_schemas.sql``), the volumes (folders
under ``<out>/volumes``), the synced ``jobs/`` and ``sql/`` folders. The graph (`job_graph`):
setup, the medallion pipeline's jobs in their ``depends_on`` order (bronze, silver, gold with a
site), training (registers ``@champion`` in the MLflow registry), gold again with the champion,
maintenance. The Delta tables stay under ``<out>/warehouse``; every table's rows are printed.

Differences from a workspace, each forced by what this machine has (docs/databricks.md, "Running
the jobs locally"): the catalog is Spark's session catalog ``spark_catalog`` (``--var catalog``),
since Maven Central refuses the Unity Catalog OSS server and its Spark connector; the registry is
MLflow's (sqlite) instead of Unity Catalog's; Auto Loader is Spark's file stream source;
statements only Databricks runs are skipped by name (`sql_files.databricks_only`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import getpass
import json
import os
import re
import secrets as random_secrets
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pyspark.sql import SparkSession

import cxrlake
from cxrlake.spark import local_runtime, sql_files

REPO = Path(__file__).resolve().parents[3]
TARGET = "dev"
SITE = "local-site"
"""Site of the first gold run; its operating point is recorded by `record_site_threshold`."""
SITE_THRESHOLD_SHIFT = -0.15
"""The local site's threshold: the shipped model's own threshold plus this (a site that wants
more sensitivity), so that the site visibly changes labels."""
SKIP_LANGUAGE = "# MAGIC"
SEPARATOR = "# COMMAND ----------"
_REF = re.compile(r"\$\{([A-Za-z0-9_.\-]+)\}")


class LocalRunError(RuntimeError):
    """A step of the local run failed; the message names the job, notebook and cell."""


# ------------------------------------------------------------------------------------ bundle


def _normalize_prefix(user: str) -> str:
    """The development-mode prefix ``dev_<user>_`` as the CLI writes it (lowercase, every
    character other than a letter, digit or '_' replaced by '_')."""
    return "dev_" + re.sub(r"[^a-z0-9_]", "_", user.lower()) + "_"


class BundleParameters:
    """``${...}`` references of the bundle resolved for one target, as ``bundle deploy`` does:
    variables (defaults, then the target's), development-mode prefixes of schema and
    registered-model names, the current user, resource ids (the job key stands for a job id)."""

    def __init__(
        self,
        bundle_dir: Path,
        target: str = TARGET,
        user: str | None = None,
        workspace: Path | None = None,
        overrides: Mapping[str, str] | None = None,
    ):
        self.dir = bundle_dir
        self.target = target
        self.user = user or getpass.getuser()
        self.workspace = workspace or Path("/Workspace")
        root = yaml.safe_load((bundle_dir / "databricks.yml").read_text())
        self.bundle_name = root["bundle"]["name"]
        self.resources: dict[str, dict[str, Any]] = {}
        for pattern in root.get("include", []):
            for file in sorted(bundle_dir.glob(pattern)):
                for kind, items in (
                    (yaml.safe_load(file.read_text()) or {}).get("resources", {}).items()
                ):
                    self.resources.setdefault(kind, {}).update(items)
        target_conf = root["targets"][target]
        self.development = target_conf.get("mode") == "development"
        self.variables: dict[str, Any] = {
            k: v.get("default") for k, v in root.get("variables", {}).items() if isinstance(v, dict)
        }
        self.variables.update(target_conf.get("variables", {}) or {})
        self.variables.update(overrides or {})

    @property
    def prefix(self) -> str:
        return _normalize_prefix(self.user) if self.development else ""

    def lookup(self, ref: str) -> Any:
        parts = ref.split(".")
        user = {
            "userName": f"{self.user}@localhost",
            "short_name": self.user,
            "domain_friendly_name": re.sub(r"[^a-z0-9]", "-", self.user.lower()),
        }
        if parts[0] == "var":
            return self.variables[parts[1]]
        if parts[:2] == ["workspace", "current_user"]:
            return user[parts[2]]
        if parts[0] == "workspace":
            return str(self.workspace / parts[1])
        if parts[0] == "bundle":
            return {"target": self.target, "name": self.bundle_name}[parts[1]]
        if parts[0] == "resources":
            kind, key, attr = parts[1], parts[2], parts[3]
            if attr == "id":
                return key
            if kind == "apps" and attr == "service_principal_client_id":
                return ""  # no app locally
            value = self.resolve(self.resources[kind][key][attr])
            if attr == "name" and kind in ("schemas", "registered_models"):
                return self.prefix + value
            return value
        raise KeyError(ref)

    def resolve(self, value: Any) -> Any:
        """``value`` with every ``${...}`` substituted (repeatedly, variables may nest)."""
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, str):
            return value
        for _ in range(10):
            new = _REF.sub(lambda m: str(self.lookup(m.group(1))), value)
            if new == value:
                return new
            value = new
        raise ValueError(f"unresolvable reference in {value!r}")

    def job(self, key: str) -> dict[str, Any]:
        return self.resources["jobs"][key]

    def job_parameters(self, key: str) -> dict[str, str]:
        """The job's parameters with their defaults, resolved."""
        return {
            p["name"]: str(self.resolve(p.get("default", "")))
            for p in self.job(key).get("parameters", [])
        }

    def notebook_tasks(self, key: str) -> list[tuple[str, Path, dict[str, str]]]:
        """(task key, notebook path, base parameters) of the job's notebook tasks, in
        ``depends_on`` order."""
        tasks = {t["task_key"]: t for t in self.job(key)["tasks"] if "notebook_task" in t}
        out = []
        for task_key in _topological(tasks):
            nb = tasks[task_key]["notebook_task"]
            path = (self.dir / "resources" / nb["notebook_path"]).resolve()
            base = {k: str(self.resolve(v)) for k, v in nb.get("base_parameters", {}).items()}
            out.append((task_key, path, base))
        return out

    def run_job_order(self, key: str) -> list[str]:
        """Job keys a ``run_job_task`` job runs, in ``depends_on`` order."""
        tasks = {t["task_key"]: t for t in self.job(key)["tasks"] if "run_job_task" in t}
        return [str(self.resolve(tasks[k]["run_job_task"]["job_id"])) for k in _topological(tasks)]


def _topological(tasks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    done: list[str] = []
    pending = list(tasks)
    while pending:
        for key in pending:
            needs = [d["task_key"] for d in tasks[key].get("depends_on", [])]
            if all(n in done or n not in tasks for n in needs):
                done.append(key)
                pending.remove(key)
                break
        else:
            raise ValueError(f"cycle in depends_on among {pending}")
    return done


def job_graph(bundle: BundleParameters) -> list[tuple[str, dict[str, str]]]:
    """(job key, parameter overrides) in the order of one local run: setup, the medallion
    pipeline's jobs (gold with `SITE`), training, gold following the champion, maintenance."""
    steps: list[tuple[str, dict[str, str]]] = [("setup", {})]
    for key in bundle.run_job_order("medallion_pipeline"):
        steps.append((key, {"site": SITE} if key == "gold_predict" else {}))
    steps += [("train_model", {"epochs": "1"}), ("gold_predict", {}), ("maintenance", {})]
    return steps


# ------------------------------------------------------------------------------------ dbutils


class _Widgets:
    """``dbutils.widgets``: definitions take their value from the job parameters (as a job run
    does), else the widget's default."""

    def __init__(self, parameters: Mapping[str, str]):
        self._parameters = dict(parameters)
        self._values: dict[str, str] = {}

    def text(self, name: str, default: str, label: str | None = None) -> None:
        self._values[name] = self._parameters.get(name, default)

    def dropdown(
        self, name: str, default: str, choices: list[str], label: str | None = None
    ) -> None:
        value = self._parameters.get(name, default)
        if value not in choices:
            raise ValueError(f"widget {name}: {value!r} is not one of {choices}")
        self._values[name] = value

    combobox = text

    def get(self, name: str) -> str:
        if name not in self._values:
            raise ValueError(f"No input widget named {name} is defined")
        return self._values[name]


class _Secrets:
    """``dbutils.secrets``: the scopes of this run (scope -> key -> value)."""

    def __init__(self, scopes: Mapping[str, Mapping[str, str]]):
        self._scopes = scopes

    def get(self, scope: str, key: str) -> str:
        try:
            return self._scopes[scope][key]
        except KeyError:
            raise ValueError(f"Secret does not exist with scope: {scope} and key: {key}") from None


class DBUtils:
    """The stand-in for ``dbutils``: widgets and secrets only."""

    def __init__(self, parameters: Mapping[str, str], scopes: Mapping[str, Mapping[str, str]]):
        self.widgets = _Widgets(parameters)
        self.secrets = _Secrets(scopes)


def notebook_cells(path: Path) -> list[str]:
    """Code cells of a Databricks ``.py`` notebook source (markdown-only cells dropped)."""
    cells = path.read_text().split(SEPARATOR)
    out = []
    for cell in cells:
        code = [
            line
            for line in cell.splitlines()
            if line.strip() and not line.startswith(("# Databricks notebook source", SKIP_LANGUAGE))
        ]
        if code:
            out.append(cell)
    return out


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_notebook(spark: SparkSession, path: Path, cwd: Path, dbutils: DBUtils) -> dict[str, Any]:
    """Execute a notebook's cells in order in one namespace, as a cluster does; returns it."""
    namespace: dict[str, Any] = {
        "__name__": "__main__",
        "spark": spark,
        "dbutils": dbutils,
        "display": print,
    }
    with _cwd(cwd):
        for i, cell in enumerate(notebook_cells(path), 1):
            code = compile(cell, f"{path.name} (cell {i})", "exec")
            exec(code, namespace)  # noqa: S102 - the project's own notebooks
    return namespace


# ------------------------------------------------------------------------------------ run


class LocalWorkspace:
    """The folders of one local run under ``out``: warehouse (Delta tables), metastore, volumes,
    the synced files, the MLflow registry and the secret scope."""

    def __init__(self, out: Path):
        self.out = out.resolve()
        self.volumes = self.out / "volumes"
        self.files = self.out / "workspace" / "files"
        self.mlflow_db = self.out / "mlflow.db"
        self.secrets = self.out / "secrets.json"

    def scopes(self, scope: str) -> dict[str, dict[str, str]]:
        """The secret scope holding the de-identification key (made once, kept across runs so
        a re-run pseudonymises alike)."""
        if not self.secrets.exists():
            key = base64.b64encode(random_secrets.token_bytes(32)).decode()
            partial = self.secrets.with_suffix(".partial")
            partial.write_text(json.dumps({"deid-key": key}))
            partial.replace(self.secrets)
        return {scope: json.loads(self.secrets.read_text())}

    def sync(self) -> None:
        """``bundle deploy``'s sync of jobs/ and sql/ (side by side, as the notebooks expect):
        their files replaced, files gone from the source removed; what the jobs wrote there
        (MLflow's local artifact store, ``mlruns``, relative to the notebooks' folder) kept."""
        for name, pattern in (("jobs", "*.py"), ("sql", "*.sql")):
            target = self.files / name
            target.mkdir(parents=True, exist_ok=True)
            wanted = {p.name for p in (REPO / name).glob(pattern)}
            for stale in target.glob(pattern):
                if stale.name not in wanted:
                    stale.unlink()
            for file_name in sorted(wanted):
                shutil.copyfile(REPO / name / file_name, target / file_name)


def deploy(spark: SparkSession, bundle: BundleParameters, ws: LocalWorkspace) -> None:
    """What ``bundle deploy`` creates before the setup job: schemas and volumes."""

    ws.sync()
    params = {"catalog": bundle.variables["catalog"]}
    for key in sql_files.SCHEMA_KEYS:
        params[f"{key}_schema"] = bundle.lookup(f"resources.schemas.{key}.name")
    params.update(
        deployer=bundle.lookup("workspace.current_user.userName"),
        engineers_group=bundle.resolve(bundle.variables["engineers_group"]),
        readers_group=bundle.resolve(bundle.variables["readers_group"]),
    )
    for name in ("00_catalog.sql", "01_schemas.sql", "02_volumes.sql"):
        sql_files.run_sql_file(spark, REPO / "sql" / name, params)
    for volume in bundle.resources.get("volumes", {}).values():
        v = bundle.resolve(volume)
        (ws.volumes / v["catalog_name"] / v["schema_name"] / v["name"]).mkdir(
            parents=True, exist_ok=True
        )


def land_images(source: Path, bundle: BundleParameters, ws: LocalWorkspace, per_label: int) -> int:
    """Copy the first ``per_label`` images of each label folder of ``source`` (``<split>/<label>/``
    or ``<label>/``) into the landing volume, as an upload would; files already there are kept.
    Returns the number of files in the volume."""
    volume = (
        ws.volumes
        / bundle.variables["catalog"]
        / bundle.lookup("resources.schemas.bronze.name")
        / "xray_images"
    )
    label_dirs = sorted(
        p for p in source.rglob("*") if p.is_dir() and p.name in ("NORMAL", "PNEUMONIA")
    )
    for folder in label_dirs:
        rel = folder.relative_to(source)
        if len(rel.parts) == 1:
            rel = Path("train") / rel
        dest = volume / rel
        dest.mkdir(parents=True, exist_ok=True)
        for image in sorted(p for p in folder.iterdir() if p.is_file())[:per_label]:
            if not (dest / image.name).exists():
                partial = dest / f".{image.name}.partial"
                shutil.copyfile(image, partial)
                partial.replace(dest / image.name)
    return sum(1 for p in volume.rglob("*") if p.is_file())


def record_site_threshold(spark: SparkSession, bundle: BundleParameters) -> None:
    """The operating point of `SITE` for the shipped model, as ``cxrlake calibrate`` stores it in
    ``gold.site_thresholds`` (version 1, once; MERGE keyed like the local engine)."""

    model = cxrlake.Model()
    table = f"{bundle.variables['catalog']}.{bundle.lookup('resources.schemas.gold.name')}"
    threshold = round(min(max(model.threshold + SITE_THRESHOLD_SHIFT, 0.05), 0.95), 6)
    spark.sql(
        f"""MERGE INTO {table}.site_thresholds AS t
        USING (SELECT '{SITE}' AS site_id, 1 AS version, '{model.name}' AS model_name,
                      '{model.version}' AS model_version, CAST({threshold} AS DOUBLE) AS threshold,
                      'local' AS label_source, current_timestamp() AS calibrated_at) AS s
        ON t.site_id = s.site_id AND t.version = s.version AND t.model_name = s.model_name
           AND t.model_version = s.model_version
        WHEN NOT MATCHED THEN INSERT (site_id, version, model_name, model_version, threshold,
                                      label_source, calibrated_at)
        VALUES (s.site_id, s.version, s.model_name, s.model_version, s.threshold, s.label_source,
                s.calibrated_at)"""
    )


def champion_version(bundle: BundleParameters, ws: LocalWorkspace) -> str | None:
    """The registered model's ``@champion`` version in the local registry, None when absent."""
    import mlflow  # the 'spark' extra

    name = (
        f"{bundle.variables['catalog']}.{bundle.lookup('resources.schemas.models.name')}."
        f"{bundle.lookup('resources.registered_models.pneumonia_classifier.name')}"
    )
    client = mlflow.MlflowClient(tracking_uri=_mlflow_uri(ws), registry_uri=_mlflow_uri(ws))
    try:
        return str(client.get_model_version_by_alias(name, "champion").version)
    except Exception:  # noqa: BLE001 - no such model or alias
        return None


def _mlflow_uri(ws: LocalWorkspace) -> str:
    return f"sqlite:///{ws.mlflow_db}"


def table_names(spark: SparkSession, bundle: BundleParameters) -> list[str]:
    """``catalog.schema.table`` of every Delta table in the bundle's schemas (views left out)."""

    catalog = bundle.variables["catalog"]
    out = []
    for key in sql_files.SCHEMA_KEYS:
        schema = bundle.lookup(f"resources.schemas.{key}.name")
        if not spark.catalog.databaseExists(schema):
            continue
        for table in spark.catalog.listTables(schema):
            if not table.isTemporary and table.tableType in ("MANAGED", "EXTERNAL"):
                out.append(f"{catalog}.{schema}.{table.name}")
    return out


def print_tables(
    spark: SparkSession, bundle: BundleParameters, ws: LocalWorkspace
) -> dict[str, int]:
    """Print each table's rows (bytes, vectors and heatmaps left out) and where delta-rs finds
    it; return the row counts."""
    from deltalake import DeltaTable  # the 'local' extra: what another engine sees

    counts = {}
    for name in table_names(spark, bundle):
        frame = spark.table(name)
        location = spark.sql(f"DESCRIBE DETAIL {name}").collect()[0]["location"]
        path = location.removeprefix("file:")
        wide = {"content", "feature_vector", "heatmap", "dicom_metadata", "dicom_metadata_deid"}
        shown = frame.select([c for c in frame.columns if c not in wide])
        n = DeltaTable(path).to_pyarrow_table().num_rows
        counts[name] = n
        print(f"\n{name}: {n} rows (Delta table {path})")
        if n:
            shown.show(n, truncate=24, vertical=False)
    print(f"\nDelta tables under {ws.out / 'warehouse'} (readable by delta-rs: DeltaTable(<path>))")
    return counts


def delta_tables(out: Path) -> dict[str, Any]:
    """Every Delta table a run left under ``out/warehouse``, read with delta-rs (no Spark), by
    ``<schema>.<table>``: what another engine sees of the run."""
    from deltalake import DeltaTable  # the 'local' extra: what another engine sees

    tables = {}
    for log in sorted((out / "warehouse").glob("*.db/*/_delta_log")):
        schema = log.parent.parent.name.removesuffix(".db")
        tables[f"{schema}.{log.parent.name}"] = DeltaTable(str(log.parent)).to_pyarrow_table()
    return tables


def run(
    out: Path,
    source: Path,
    per_label: int,
    train: bool = True,
    retrain: bool = False,
    bundle_dir: Path = REPO / "bundle",
    user: str | None = None,
) -> dict[str, int]:
    """One local run of the job graph (`job_graph`); returns the row count of every table."""
    import cxrlake  # noqa: F401 - fail early without the extension

    ws = LocalWorkspace(out)
    ws.out.mkdir(parents=True, exist_ok=True)
    bundle = BundleParameters(
        bundle_dir,
        user=user,
        workspace=ws.out / "workspace",
        overrides={"catalog": local_runtime.LOCAL_CATALOG},
    )
    os.environ[local_runtime.VOLUMES_ENV] = str(ws.volumes)
    os.environ["MLFLOW_TRACKING_URI"] = _mlflow_uri(ws)
    os.environ["MLFLOW_REGISTRY_URI"] = _mlflow_uri(ws)
    os.environ.setdefault("CXRLAKE_LOCAL_DISK", str(ws.out / "local_disk0"))
    t0 = time.monotonic()
    spark = local_runtime.session(ws.out)
    print(f"Spark {spark.version} + Delta Lake, catalog {bundle.variables['catalog']}, in {ws.out}")
    try:
        deploy(spark, bundle, ws)
        files = land_images(source, bundle, ws, per_label)
        print(f"landing volume: {files} files")
        for key, overrides in job_graph(bundle):
            if key == "train_model":
                version = champion_version(bundle, ws)
                if not train or (version is not None and not retrain):
                    why = "--no-train" if not train else f"@champion is version {version}"
                    print(f"== job {key}: skipped ({why}; --retrain trains a new version)")
                    continue
            if key == "gold_predict" and overrides.get("site"):
                record_site_threshold(spark, bundle)
            params = {**bundle.job_parameters(key), **overrides}
            scope = params.get("deid_secret_scope") or "cxrlake"
            for task_key, path, base in bundle.notebook_tasks(key):
                if not path.exists():
                    raise LocalRunError(f"job {key} task {task_key}: {path} does not exist")
                reason = _skip_task(task_key, params)
                if reason:
                    print(f"== job {key} / task {task_key}: skipped ({reason})")
                    continue
                started = time.monotonic()
                print(f"== job {key} / task {task_key} ({path.name})", flush=True)
                dbutils = DBUtils({**params, **base}, ws.scopes(scope))
                try:
                    run_notebook(spark, ws.files / "jobs" / path.name, ws.files / "jobs", dbutils)
                except Exception as e:
                    raise LocalRunError(f"job {key} / task {task_key} failed: {e}") from e
                print(f"   done in {time.monotonic() - started:.0f} s", flush=True)
        counts = print_tables(spark, bundle, ws)
    finally:
        spark.stop()
    print(f"local run finished in {time.monotonic() - t0:.0f} s")
    return counts


def _skip_task(task_key: str, params: Mapping[str, str]) -> str | None:
    """Tasks whose every statement needs Databricks (docs/databricks.md lists them)."""
    if task_key == "create_sql_function" and not list((REPO / "dist").glob("cxrlake-*.whl")):
        return "Unity Catalog Python UDFs and grants only; no wheel in dist/ (`make wheel`)"
    if task_key == "grant_review_app" and not params.get("review_app_principal"):
        return "grants to the review app's service principal: no app and no GRANT locally"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cxrlake.spark.databricks_local", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="folder of the run (kept)")
    parser.add_argument("--source", type=Path, required=True, help="images: <split>/<label>/")
    parser.add_argument("--per-label", type=int, default=12, help="images per label folder")
    parser.add_argument("--no-train", action="store_true", help="skip the training job")
    parser.add_argument("--retrain", action="store_true", help="train even with a @champion")
    args = parser.parse_args(argv)
    try:
        run(args.out, args.source, args.per_label, train=not args.no_train, retrain=args.retrain)
    except (LocalRunError, local_runtime.LocalRuntimeError) as e:
        print(f"databricks-local: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
