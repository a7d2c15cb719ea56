"""`make databricks-local`, short: the bundle's dev job graph (the notebooks of jobs/, parameters
from bundle/resources/*.job.yml) on PySpark local with Delta Lake, over a few dozen real images.

One clean run (with the training job registering @champion in the MLflow registry) is checked
for what it leaves: Delta tables readable by delta-rs, the site's labels and metrics agreeing,
one model behind silver and gold. Then a second run must add nothing, and a run killed with
SIGKILL and run again must hold the rows of the clean run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import cxrlake
from cxrlake.spark import databricks_local, jobs
from cxrlake.spark.local_runtime import LOCAL_CATALOG

PER_LABEL = 10
USER = "ci"
PREFIX = f"dev_{USER}_"


def _source(root: Path, train: Path) -> Path:
    for label in ("NORMAL", "PNEUMONIA"):
        folder = root / "train" / label
        folder.mkdir(parents=True)
        for p in sorted(train.glob(f"{label}/*.jpeg"))[:PER_LABEL]:
            shutil.copyfile(p, folder / p.name)
    # a file silver quarantines (outside train/, which the training job reads)
    (root / "test" / "NORMAL").mkdir(parents=True)
    (root / "test" / "NORMAL" / "broken.jpeg").write_bytes(b"not an image\n" * 40)
    return root


def _run(out: Path, source: Path, *args: str, kill_on: str | None = None) -> str:
    """One `python -m cxrlake.spark.databricks_local` run in its own process group; with
    ``kill_on``, SIGKILL to the group (Python and its JVM) 15 s after that line appears."""
    command = [
        sys.executable,
        "-m",
        "cxrlake.spark.databricks_local",
        "--out",
        str(out),
        "--source",
        str(source),
        "--per-label",
        str(PER_LABEL + 1),
        *args,
    ]
    env = {**os.environ, "USER": USER, "LOGNAME": USER}
    lines: list[str] = []
    seen: list[float] = []
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    ) as proc:

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if kill_on and not seen and line.startswith(kill_on):
                    seen.append(time.monotonic())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        while proc.poll() is None:
            if seen and time.monotonic() - seen[0] > 15:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                reader.join(timeout=30)
                return "".join(lines)
            time.sleep(0.5)
        reader.join(timeout=30)
    output = "".join(lines)
    assert proc.returncode == 0, output[-4000:]
    return output


def _comparable(table: pa.Table) -> list[str]:
    """Rows as sorted JSON without run-dependent columns (timestamps, dates, batch ids, bytes)."""
    keep = [
        f.name
        for f in table.schema
        if not pa.types.is_timestamp(f.type)
        and not pa.types.is_date(f.type)
        and not f.name.endswith("batch_id")
        and f.name not in ("content", "file_path", "source_modified_at")
    ]

    def rounded(v):
        if isinstance(v, float):
            return round(v, 6)
        if isinstance(v, list):
            return [rounded(x) for x in v]
        if isinstance(v, dict):
            return {k: rounded(x) for k, x in v.items()}
        return v

    return sorted(
        json.dumps({k: rounded(v) for k, v in r.items()}, sort_keys=True, default=str)
        for r in table.select(keep).to_pylist()
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory, shared_data) -> Path:
    return _source(tmp_path_factory.mktemp("landing"), shared_data / "chest_xray" / "train")


@pytest.fixture(scope="module")
def clean(tmp_path_factory, source):
    out = tmp_path_factory.mktemp("clean")
    output = _run(out, source)
    return out, output, databricks_local.delta_tables(out)


def test_the_job_graph_runs_every_notebook_against_three_part_names(clean):
    out, output, tables = clean
    for job in ("setup", "bronze_ingest", "silver_transform", "gold_predict", "train_model"):
        assert f"== job {job} / task" in output, job
    assert output.count("== job gold_predict / task") == 2
    assert "== job maintenance / task maintenance" in output
    # each skipped task or statement names why
    for line in output.splitlines():
        if "skipped" in line and line.startswith(("==", "skipped")):
            assert "(" in line or ":" in line, line
    assert f"{LOCAL_CATALOG}.{PREFIX}bronze.kaggle_xray_metadata" in output
    # the tables are Delta tables delta-rs reads, with the rows Spark printed
    assert len(tables[f"{PREFIX}bronze.kaggle_xray_metadata"]) == 2 * PER_LABEL + 1
    assert len(tables[f"{PREFIX}silver.xray_metadata"]) == 2 * PER_LABEL
    assert tables[f"{PREFIX}silver.quarantine"]["filename"].to_pylist() == ["broken.jpeg"]
    for name, table in tables.items():
        assert f"{LOCAL_CATALOG}.{name}: {table.num_rows} rows" in output, name


def _of_model(table: pa.Table, name: str, version: str) -> pa.Table:
    return table.filter(
        pc.and_(pc.equal(table["model_name"], name), pc.equal(table["model_version"], version))
    )


def _champion(tables) -> tuple[str, str]:
    preds = tables[f"{PREFIX}gold.pneumonia_predictions"]
    shipped = cxrlake.Model()
    pairs = zip(preds["model_name"].to_pylist(), preds["model_version"].to_pylist(), strict=True)
    others = {pair for pair in pairs if pair != (shipped.name, shipped.version)}
    assert len(others) == 1, others
    return others.pop()


def test_training_registers_the_champion_and_silver_and_gold_follow_it(clean):
    """Defect 11: one model resolution (model_source.job_model) for silver and gold."""
    out, output, tables = clean
    name, version = _champion(tables)
    assert name == f"{LOCAL_CATALOG}.{PREFIX}models.{PREFIX}pneumonia_classifier"
    assert version == "1"
    preds = tables[f"{PREFIX}gold.pneumonia_predictions"]
    mine = preds.filter(pc.equal(preds["model_version"], version))
    assert mine.num_rows == 2 * PER_LABEL
    features = tables[f"{PREFIX}silver.image_features"]
    assert set(features["feature_extraction_model"].to_pylist()) == {f"{name}:{version}"}


def test_the_site_relabels_and_the_metrics_are_those_of_the_labels(clean):
    """Defect 12: gold with a site re-decides the labels silver wrote at the model's threshold,
    and the metrics rows are computed from those labels."""
    _, _, tables = clean
    shipped = cxrlake.Model()
    site = tables[f"{PREFIX}gold.site_thresholds"].to_pylist()
    assert len(site) == 1
    threshold = site[0]["threshold"]
    assert threshold != pytest.approx(shipped.threshold)
    preds = tables[f"{PREFIX}gold.pneumonia_predictions"]
    preds = preds.filter(pc.equal(preds["model_version"], shipped.version))
    assert set(preds["threshold_source"].to_pylist()) == {f"site:{databricks_local.SITE}:v1"}
    for row in preds.to_pylist():
        assert row["predicted_label"] == int(row["prediction_probability"] >= threshold)
        assert row["decision_threshold"] == threshold
    perf = tables[f"{PREFIX}gold.model_performance"]
    perf = perf.filter(pc.equal(perf["model_version"], shipped.version)).to_pylist()
    newest = max(perf, key=lambda r: r["evaluated_at"])
    assert newest["threshold"] == threshold
    matrix = json.loads(newest["confusion_matrix"])
    labels = [(r["true_label"], r["predicted_label"]) for r in preds.to_pylist()]
    assert matrix["tp"] == labels.count((1, 1)) and matrix["fp"] == labels.count((0, 1))


def test_a_second_run_adds_nothing(clean, source):
    out, _, before = clean
    output = _run(out, source)
    assert "== job train_model: skipped (@champion is version 1" in output
    after = databricks_local.delta_tables(out)
    assert set(after) == set(before)
    for name in before:
        assert _comparable(after[name]) == _comparable(before[name]), name


@pytest.mark.skipif(
    os.environ.get("CXRLAKE_SLOW_TESTS") != "1",
    reason="two more job-graph runs (~10 min on 2 cores): `make test-databricks-slow` runs it",
)
def test_a_run_killed_with_sigkill_and_run_again_equals_a_clean_run(
    clean, source, tmp_path_factory
):
    """Killed in the silver job, then run again (both without the training job, which the clean
    run's state cannot repeat alike): every row the clean run holds up to its champion. The
    shipped model's labels are left out: this run's last gold pass re-decides them at the
    model's threshold (no site), the clean run's scored with the champion instead."""
    _, _, want = clean
    out = tmp_path_factory.mktemp("killed")
    first = _run(out, source, "--no-train", kill_on="== job silver_transform")
    assert "local run finished" not in first
    _run(out, source, "--no-train")
    got = databricks_local.delta_tables(out)
    assert set(got) == set(want)
    shipped = cxrlake.Model()
    labels = ["predicted_label", "is_correct", "decision_threshold", "threshold_source"]
    for name in want:
        a, b = want[name], got[name]
        if name.endswith("image_features"):
            assert len(b) == len(a), name  # the champion's features here, the shipped model's there
            continue
        if name.endswith("drift_metrics"):  # per model; the shipped model's of other labels
            assert len(b) == len(_of_model(a, shipped.name, shipped.version)), name
            continue
        if name.endswith("pneumonia_predictions"):
            a = _of_model(a, shipped.name, shipped.version).drop_columns(labels)
            b = b.drop_columns(labels)
        if name.endswith("model_performance"):
            a = _of_model(a, shipped.name, shipped.version)
            assert set(_comparable(a)) <= set(_comparable(b)), name
            continue
        assert _comparable(b) == _comparable(a), name


def test_add_columns_keeps_the_case_of_nested_fields():
    """Defect 15: the heatmap STRUCT's fields stay `rows`, `cols`, `values` (not ROWS ...)."""
    from cxrlake.medallion import schemas

    have = [f.name for f in schemas.PREDICTIONS.arrow_schema if f.name != "heatmap"]
    statement = jobs.add_columns_statement("c.g.pneumonia_predictions", schemas.PREDICTIONS, have)
    assert statement == (
        "ALTER TABLE c.g.pneumonia_predictions ADD COLUMNS "
        "(`heatmap` STRUCT<`rows`: INT, `cols`: INT, `values`: ARRAY<FLOAT>>)"
    )
