"""One scenario through both engines of the medallion: the local engine (delta-rs + DuckDB) and the
Spark engine (PySpark local), over real images. After every step each table holds the same rows
in both (keys and values; timestamps, batch ids and bronze bytes aside: bronze compares hashes).

The Spark side is the Spark jobs' own code on PySpark local with Delta Lake
(`cxrlake.spark.local_runtime`): each stage's decision (`cxrlake.spark.stages.decide_*`) is
written by `cxrlake.spark.jobs.apply_changes` (MERGE / MERGE ... DELETE on real Delta tables that
`jobs.create_tables` made from sql/, addressed by three-part names); both sides are then read
back from their Delta tables.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

import cxrlake
from cxrlake.lakehouse.pipeline import run_pipeline
from cxrlake.medallion import rules

pytestmark = pytest.mark.filterwarnings(
    "ignore:PySpark does not yet fully support pandas >= 3.0.0:FutureWarning"
)


@pytest.fixture(scope="module")
def spark(delta_spark):
    # one partition of files per read, as the local engine batches them (the network's output
    # may move in the last bits with the batch)
    delta_spark.conf.set("spark.sql.shuffle.partitions", "1")
    delta_spark.conf.set("spark.sql.files.maxPartitionBytes", str(128 * 1024 * 1024))
    return delta_spark


def _images(folder: Path, start: int, count: int) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".jpeg")[start : start + count]


class SparkState:
    """The Spark engine's tables: real Delta tables in their own schemas of Spark's catalog
    (``spark_catalog.<name>_bronze`` ...), written by applying its decisions."""

    _count = 0

    def __init__(self, spark, model_path: str | None):
        from cxrlake.spark import jobs
        from cxrlake.spark.deployment import Deployment

        SparkState._count += 1
        prefix = f"parity{SparkState._count}"
        self.spark = spark
        self.model_path = model_path
        self.names = Deployment(
            "spark_catalog",
            bronze=f"{prefix}_bronze",
            silver=f"{prefix}_silver",
            gold=f"{prefix}_gold",
            models=f"{prefix}_models",
        )
        for key in ("bronze", "silver", "gold", "models"):
            spark.sql(f"CREATE SCHEMA IF NOT EXISTS spark_catalog.{self.names.schema(key)}")
        jobs.create_tables(spark, self.names)
        self.runs = 0
        self.deid_key: bytes | None = None  # shipped to the tasks, as the jobs do
        self._read: dict[str, pa.Table] | None = None

    @property
    def tables(self) -> dict[str, pa.Table]:
        """Every table, read back from Delta (once per run)."""
        from cxrlake.spark import jobs
        from cxrlake.spark.frames import to_arrow

        if self._read is None:
            self._read = self._read_tables(jobs, to_arrow)
        return self._read

    def _read_tables(self, jobs, to_arrow) -> dict[str, pa.Table]:
        return {
            view: to_arrow(self.spark.table(jobs.table_name(self.names, spec)), spec.arrow_schema)
            for view, spec in rules.VIEWS.items()
        }

    def run(self, source: Path, model_path: str | None) -> dict[str, dict[str, int]]:
        """One run: bronze, silver+gold, performance; returns rows upserted/updated/deleted."""
        from cxrlake.spark import jobs, stages
        from cxrlake.spark.catalog import SparkCatalog
        from cxrlake.spark.udfs import model_for

        self.runs += 1
        self._read = None
        model = model_for(model_path)
        now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(hours=self.runs)
        counts: dict[str, dict[str, int]] = {}
        batch = f"spark-run-{self.runs}"
        for decide in (
            lambda t: stages.decide_bronze(self.spark, t, str(source), model, batch, now),
            lambda t: stages.decide_analysis(
                self.spark, t, model, model_path, now, deid_key=self.deid_key
            ),
            lambda t: stages.decide_performance(SparkCatalog(self.spark, self.names), model, now),
        ):
            state = stages.state_tables(SparkCatalog(self.spark, self.names))
            written = jobs.apply_changes(self.spark, self.names, decide(state))
            for view, n in written.items():
                total = counts.setdefault(view, {"upserted": 0, "updated": 0, "deleted": 0})
                merge, stats, delete = (n.get(k, {}) for k in ("merge", "stats", "delete"))
                total["upserted"] += merge.get("num_inserted_rows", 0)
                total["upserted"] += merge.get("num_updated_rows", 0)
                total["updated"] += stats.get("num_updated_rows", 0)
                total["deleted"] += delete.get("num_deleted_rows", 0)
        return counts


def _comparable(table: pa.Table) -> list[str]:
    """Rows as sorted JSON, without run-dependent columns; floats to 6 decimals (the engines
    batch images differently, which may move the last bits of a network output)."""
    keep = [
        f.name
        for f in table.schema
        if not pa.types.is_timestamp(f.type)
        and not pa.types.is_date(f.type)
        and not f.name.endswith("batch_id")
        and f.name != "content"
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
        json.dumps({k: rounded(v) for k, v in r.items()}, sort_keys=True)
        for r in table.select(keep).to_pylist()
    )


def _local_tables(lakehouse: Path) -> dict[str, pa.Table]:
    return {
        view: DeltaTable(spec.path(lakehouse, "dev")).to_pyarrow_table()
        for view, spec in rules.VIEWS.items()
    }


def _assert_same(step: str, local: dict[str, pa.Table], spark: dict[str, pa.Table]) -> None:
    for view in rules.VIEWS:
        got, want = _comparable(spark[view]), _comparable(local[view])
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        assert not missing and not extra, (
            f"after {step}: {view} differs: {_columns_apart(missing, extra)}; only local: "
            f"{missing[:2]}, only Spark: {extra[:2]}"
        )
        assert got == want, f"after {step}: {view} has duplicate rows"


def _columns_apart(local: list[str], spark: list[str]) -> list[str]:
    """Columns whose values differ between the first rows of each side with one image_id."""
    a = {json.loads(r).get("image_id"): json.loads(r) for r in local}
    b = {json.loads(r).get("image_id"): json.loads(r) for r in spark}
    for key in a.keys() & b.keys():
        return sorted(c for c in a[key] if a[key][c] != b[key].get(c))
    return []


def _ids(table: pa.Table, filename: str) -> set[str]:
    return set(table.filter(pc.equal(table.column("filename"), filename))["image_id"].to_pylist())


def test_both_engines_hold_the_same_rows_after_every_step(
    spark, tmp_path, shared_data, tiny_model_path
):
    train = shared_data / "chest_xray" / "train"
    src = tmp_path / "landing"
    for label in ("NORMAL", "PNEUMONIA"):
        (src / "train" / label).mkdir(parents=True)
        for p in _images(train / label, 0, 3):
            shutil.copyfile(p, src / "train" / label / p.name)
    (src / "train" / "NORMAL" / "broken.jpeg").write_bytes(b"this is not an image\n" * 10)
    (src / "train" / "NORMAL" / "notes.txt").write_text("skipped by both engines' listing\n")
    lakehouse = tmp_path / "lakehouse"
    engine = SparkState(spark, None)
    when = [1_800_000_000]

    def touch(path: Path) -> None:
        # a distinct modification time at millisecond precision (Hadoop's listing granularity)
        when[0] += 60
        os.utime(path, (when[0], when[0]))

    def step(name: str, model_path: str | None = None) -> dict:
        summary = run_pipeline([src], lakehouse, model=model_path, progress=False)
        counts = engine.run(src, model_path)
        local = _local_tables(lakehouse)
        _assert_same(name, local, engine.tables)
        return {"local": summary, "spark": counts, "tables": local}

    first = step("first load")
    assert first["tables"]["silver"].num_rows == 6
    assert first["tables"]["quarantine"]["filename"].to_pylist() == ["broken.jpeg"]

    again = step("re-run")
    assert set(again["local"].new_rows.values()) == {0}
    assert not any(sum(c.values()) for c in again["spark"].values())

    for label in ("NORMAL", "PNEUMONIA"):
        for p in _images(train / label, 50, 5):
            shutil.copyfile(p, src / "train" / label / p.name)
    added = step("ten new images")
    assert added["tables"]["predictions"].num_rows == 16
    assert added["spark"]["predictions"]["upserted"] == 10

    replaced = src / "train" / "PNEUMONIA" / _images(train / "PNEUMONIA", 0, 1)[0].name
    shutil.copyfile(_images(train / "PNEUMONIA", 80, 1)[0], replaced)
    touch(replaced)
    new_bytes = step("file replaced by new bytes")
    bronze = new_bytes["tables"]["bronze"]
    assert len(_ids(bronze, replaced.name)) == 1
    assert pc.sum(pc.equal(bronze["filename"], replaced.name)).as_py() == 2

    corrupt = src / "train" / "NORMAL" / _images(train / "NORMAL", 1, 1)[0].name
    corrupt.write_bytes(corrupt.read_bytes()[:500])
    touch(corrupt)
    bad = step("file replaced by a corrupt one")
    (bad_id,) = _ids(bad["tables"]["bronze"], corrupt.name)
    for view in ("silver", "features", "predictions"):
        assert bad_id not in bad["tables"][view]["image_id"].to_pylist(), view
    assert bad_id in bad["tables"]["quarantine"]["image_id"].to_pylist()

    moved = src / "train" / "NORMAL" / _images(train / "NORMAL", 2, 1)[0].name
    moved.rename(src / "train" / "PNEUMONIA" / moved.name)
    relabelled = step("file moved to the other class folder")
    silver = relabelled["tables"]["silver"]
    labels = silver.filter(pc.equal(silver["filename"], moved.name))["label_name"].to_pylist()
    assert "PNEUMONIA" in labels

    tiny = cxrlake.Model(tiny_model_path)
    upgraded = step("new model version", tiny_model_path)
    preds = upgraded["tables"]["predictions"]
    assert pc.sum(pc.equal(preds["model_version"], tiny.version)).as_py() == silver.num_rows
    features = upgraded["tables"]["features"]
    assert set(features["feature_extraction_model"].to_pylist()) == {f"{tiny.name}:{tiny.version}"}
    assert tiny.version in upgraded["tables"]["performance"]["model_version"].to_pylist()


def test_both_engines_decide_the_same_dicom_rows(spark, tmp_path, shared_data, monkeypatch):
    """DICOM files beside a JPEG: the same bronze metadata, the same de-identified silver
    metadata and the same BurnedInAnnotation quarantine in both engines; the extension-less DICOM
    copy is taken and the extension-less text file skipped by both listings."""
    from dicom_support import TEST_KEY, write_sources

    train = shared_data / "chest_xray" / "train"
    src = tmp_path / "landing"
    write_sources(src, {"NORMAL": _images(train / "NORMAL", 0, 1)})
    monkeypatch.setenv("CXRLAKE_DEID_KEY", TEST_KEY)
    lakehouse = tmp_path / "lakehouse"
    engine = SparkState(spark, None)
    engine.deid_key = TEST_KEY.encode()
    run_pipeline([src], lakehouse, progress=False)
    engine.run(src, None)
    local = _local_tables(lakehouse)
    _assert_same("DICOM load", local, engine.tables)

    bronze, silver = engine.tables["bronze"], engine.tables["silver"]
    assert "README" not in bronze["filename"].to_pylist()
    dicom = silver.filter(pc.is_valid(silver["dicom_metadata_deid"]))
    assert sorted(dicom["filename"].to_pylist()) == [
        "CT_small.dcm",
        "IM000001",
        "MR_small.dcm",
        "RG1_UNCR.dcm",
    ]
    quarantine = engine.tables["quarantine"]
    assert quarantine.select(["filename", "reason"]).to_pylist() == [
        {
            "filename": "burned_in.dcm",
            "reason": "BurnedInAnnotation is YES: the pixels may show identifying text",
        }
    ]
    burned_id = quarantine["image_id"][0].as_py()
    assert burned_id not in engine.tables["predictions"]["image_id"].to_pylist()


def test_both_engines_compare_champion_and_challenger_alike(spark):
    """gold.champion_challenger_comparison: the rule in DuckDB (`cxrlake promote`) and in Spark
    SQL over mapInArrow (the serving_comparison job) give the same rows, from requests logged
    locally (image sha256) and by the AI Gateway (base64 bytes)."""
    import base64
    import hashlib

    from cxrlake.medallion import schemas
    from cxrlake.medallion import serving as serving_tables
    from cxrlake.serving.registry import decide_comparison
    from cxrlake.spark.frames import arrow_frame
    from cxrlake.spark.serving import decide_comparison as spark_decide

    images = [bytes([i]) * (10 + i) for i in range(6)]
    digests = [hashlib.sha256(b).hexdigest() for b in images]
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    payload = []

    def answer(entity, model, version, labels, contents, status=200, n=[0]):  # noqa: B006
        n[0] += 1
        request = {"dataframe_split": {"columns": ["content"], "data": [[c] for c in contents]}}
        predictions = [
            {
                "probability": None if label is None else 0.2 + 0.6 * label,
                "predicted_label": label,
                "label_name": None,
                "model_name": model,
                "model_version": version,
                "error": None if label is not None else "not an image",
            }
            for label in labels
        ]
        payload.append(
            {
                "databricks_request_id": f"r{n[0]:03d}",
                "request_time": t0 + dt.timedelta(n[0]),
                "status_code": status,
                "served_entity_id": entity,
                "request": json.dumps(request),
                "response": json.dumps({"predictions": predictions}),
            }
        )

    local = [f"sha256:{d}" for d in digests]
    remote = [base64.b64encode(b).decode() for b in images]
    answer("champion", "m", "1", [1, 0, 1, 0], local[:4])
    answer("challenger", "m", "2", [1, 1, 0, 0, None], remote[:5])
    answer("champion", "m", "1", [0], local[4:5])
    answer("champion", "m", "1", [1], local[5:6], status=503)
    payload_table = pa.Table.from_pylist(
        [{n: r.get(n) for n in serving_tables.GOLD_SERVING_PAYLOAD.names} for r in payload],
        schema=serving_tables.GOLD_SERVING_PAYLOAD,
    )
    predictions = pa.Table.from_pylist(
        [
            {"prediction_id": f"p{i}", "image_id": f"i{i}", "content_sha256": d}
            for i, d in enumerate(digests)
        ]
    )
    feedback = pa.Table.from_pylist(
        [
            {
                "feedback_id": f"f{i}",
                "prediction_id": f"p{i}",
                "correct_label": label,
                "feedback_timestamp": t0 + dt.timedelta(hours=i),
            }
            for i, label in enumerate(["PNEUMONIA", "NORMAL", "PNEUMONIA", None, "NORMAL"])
        ],
        schema=pa.schema(
            [
                ("feedback_id", pa.string()),
                ("prediction_id", pa.string()),
                ("correct_label", pa.string()),
                ("feedback_timestamp", schemas.TS),
            ]
        ),
    )
    local_rows = decide_comparison(payload_table, feedback, predictions, t0).to_pylist()

    def frame(table):
        return arrow_frame(spark, table)  # Arrow straight in, as the Spark jobs do

    spark_rows = [
        r.asDict()
        for r in spark_decide(spark, frame(payload_table), frame(feedback), frame(predictions), t0)
        .orderBy("model_name", "model_version")
        .collect()
    ]
    drop = ("computed_at", "first_request_time", "last_request_time")
    assert [{k: v for k, v in r.items() if k not in drop} for r in spark_rows] == [
        {k: v for k, v in r.items() if k not in drop} for r in local_rows
    ]
    champion, challenger = local_rows
    assert (champion["paired_images"], champion["agreement_rate"]) == (4, 0.5)
    assert (challenger["images"], challenger["image_errors"]) == (5, 1)
    assert (champion["sensitivity"], champion["specificity"]) == (1.0, 1.0)
    assert (challenger["sensitivity"], challenger["specificity"]) == (0.5, 0.0)
