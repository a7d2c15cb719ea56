"""Spark with Delta Lake on this machine: the runtime of ``make databricks-local`` and the tests.

PySpark (pinned in pyproject.toml, extra ``spark``) runs ``local[2]`` with the Delta Lake jars that
``make databricks-jars`` copies from Maven Central (``tools/databricks_local/pom.xml``) into
``.cache/databricks-jars``. Three-part names are served by Spark's built-in session catalog
(`LOCAL_CATALOG`, ``spark_catalog``) with Delta's ``DeltaCatalog``, kept in an embedded Hive
metastore (Derby, shipped with pyspark) so that tables outlive the process. Unity Catalog OSS is
not used: Maven Central refuses ``io.unitycatalog:unitycatalog-server`` and the Spark connector
``unitycatalog-spark_4.2_2.13`` (docs/databricks.md, "Running the jobs locally").

Paths under ``/Volumes/<catalog>/<schema>/<volume>`` (the FUSE mount of a Databricks cluster) map
to ``$CXRLAKE_VOLUMES_ROOT/<catalog>/<schema>/<volume>`` when that variable is set
(`storage_path`); on Databricks it is not set and paths are used as they are.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cxrlake.exceptions import CxrlakeError

if TYPE_CHECKING:  # pyspark is imported when a session starts (a clear error when it is absent)
    from pyspark.sql import SparkSession

LOCAL_CATALOG = "spark_catalog"
"""Catalog of the local runtime: Spark's session catalog (there is no other catalog plugin for
Delta tables without Unity Catalog)."""
SPARK_VERSION = "4.2.0"
"""The pyspark the Delta jars are built for (delta-spark_4.2_2.13 4.4.0)."""
JARS_ENV = "CXRLAKE_DELTA_JARS"
VOLUMES_ENV = "CXRLAKE_VOLUMES_ROOT"
RUNTIME_CONF = "spark.cxrlake.runtime"
"""Session conf set to ``oss`` by `session`: `cxrlake.spark.sql_files.run_sql_file` then skips
the statements only Databricks runs (`sql_files.DATABRICKS_ONLY`)."""


class LocalRuntimeError(CxrlakeError, RuntimeError):
    """The local Spark runtime cannot start (jars missing, wrong pyspark); says what to run."""


def jars_dir() -> Path:
    """``$CXRLAKE_DELTA_JARS``, else ``.cache/databricks-jars`` of the source tree."""
    if os.environ.get(JARS_ENV):
        return Path(os.environ[JARS_ENV])
    return Path(__file__).resolve().parents[3] / ".cache" / "databricks-jars"


def delta_jars(directory: str | os.PathLike[str] | None = None) -> list[str]:
    """The jars of ``directory`` (`jars_dir`) that pyspark does not ship itself: Delta and what it
    adds. Artifacts pyspark has in another version (hadoop, jackson, parquet, scala ...) are left
    out, so the driver and the tasks load one version of each class."""
    import pyspark  # the 'spark' extra (this module resolves jars without it)

    folder = Path(directory) if directory else jars_dir()
    found = sorted(folder.glob("*.jar")) if folder.is_dir() else []
    if not any(p.name.startswith("delta-spark_") for p in found):
        raise LocalRuntimeError(
            f"no Delta Lake jars in {folder}: run `make databricks-jars` "
            f"(or set {JARS_ENV} to a folder holding delta-spark_4.2_2.13-*.jar)"
        )
    shipped = {_artifact(p.name) for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    return [str(p) for p in found if _artifact(p.name) not in shipped]


def _artifact(jar_name: str) -> str:
    """``hadoop-client-api`` of ``hadoop-client-api-3.4.2.jar``."""
    stem = jar_name[: -len(".jar")]
    parts = stem.split("-")
    while len(parts) > 1 and parts[-1][:1].isdigit():
        parts.pop()
    return "-".join(parts)


def check_pyspark() -> None:
    """Raise LocalRuntimeError unless the installed pyspark is `SPARK_VERSION`."""
    import pyspark  # the 'spark' extra (this module resolves jars without it)

    if pyspark.__version__ != SPARK_VERSION:
        raise LocalRuntimeError(
            f"pyspark {pyspark.__version__} is installed; Delta Lake 4.4.0 needs pyspark "
            f"{SPARK_VERSION} (pyproject.toml extra 'spark'; `make setup`)"
        )


def submit_args(jars: list[str]) -> str:
    """``PYSPARK_SUBMIT_ARGS`` putting ``jars`` on the driver's class path. Needed when the JVM
    is started by the first session of a process: a later session's ``spark.jars`` reaches the
    tasks but not the driver, which loads Delta's SQL extension."""
    return f"--jars {','.join(jars)} pyspark-shell"


def session(
    root: str | os.PathLike[str],
    hive: bool = True,
    app_name: str = "cxrlake-databricks-local",
    cores: int = 2,
) -> SparkSession:
    """A ``local[cores]`` SparkSession with Delta Lake: managed tables under ``root/warehouse``,
    the metastore in ``root/metastore_db`` (``hive``; else Spark's in-memory catalog, for tests),
    UTC, small partitions for a few dozen images, no UI or console progress."""
    from pyspark.sql import SparkSession  # the 'spark' extra

    check_pyspark()
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    jars = delta_jars()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_SUBMIT_ARGS", submit_args(jars))
    builder = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName(app_name)
        .config("spark.jars", ",".join(jars))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config(
            "spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog"
        )
        .config("spark.sql.warehouse.dir", str(root / "warehouse"))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(cores))
        .config("spark.default.parallelism", str(cores))
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "16")
        .config("spark.sql.files.maxPartitionBytes", "8m")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        # Delta's defaults are for clusters: 50 partitions per snapshot, 10 000 listing tasks
        .config("spark.databricks.delta.snapshotPartitions", str(cores))
        .config("spark.sql.sources.parallelPartitionDiscovery.parallelism", str(cores))
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={root}")
        .config(RUNTIME_CONF, "oss")
    )
    if hive:
        url = f"jdbc:derby:;databaseName={root / 'metastore_db'};create=true"
        builder = builder.config("spark.hadoop.javax.jdo.option.ConnectionURL", url)
        builder = builder.enableHiveSupport()
    spark = builder.getOrCreate()
    if spark.version != SPARK_VERSION:
        raise LocalRuntimeError(f"Spark {spark.version} started; expected {SPARK_VERSION}")
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def is_oss(spark: SparkSession) -> bool:
    """True on the local runtime (`session`), False on Databricks."""
    try:
        return spark.conf.get(RUNTIME_CONF, "") == "oss"
    except Exception:  # noqa: BLE001 - a conf lookup Spark Connect refuses
        return False


def storage_path(path: str) -> str:
    """Where a ``/Volumes/...`` path is stored: ``$CXRLAKE_VOLUMES_ROOT/...`` when set (the local
    runtime), else ``path`` unchanged (Databricks mounts volumes at ``/Volumes``)."""
    root = os.environ.get(VOLUMES_ENV)
    if root and (path == "/Volumes" or path.startswith("/Volumes/")):
        return str(Path(root) / path[len("/Volumes/") :])
    return path
