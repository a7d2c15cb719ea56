"""cxrlake.spark on a real local Spark (local[2], Java 17): SQL functions equal the Python API,
mapInArrow transforms give the exact lakehouse schemas and rows, bad files end in quarantine."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import cxrlake
from cxrlake.files import is_image_name
from cxrlake.medallion import schemas as lake_schemas
from cxrlake.medallion import transforms as lake
from cxrlake.spark import register, schemas, transforms, warehouse_udf
from cxrlake.spark.udfs import PREDICT_RESULT, local_path

DATA = Path(
    os.environ.get("CXRLAKE_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)
FULLRES = DATA / "chest_xray_fullres"
TRAIN = DATA / "chest_xray" / "train"
# pyspark 4.3 warns once about pandas 3 when it first converts through pandas (toArrow of
# timestamps, pandas_udf); the warning is pyspark's own, not about this code.
pytestmark = pytest.mark.filterwarnings(
    "ignore:PySpark does not yet fully support pandas >= 3.0.0:FutureWarning"
)
WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    # Python workers must run this interpreter (the venv with pyarrow and cxrlake); the variable
    # is read when the SparkContext starts.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master("local[2]")
        .appName("cxrlake-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "16")
        .config("spark.sql.files.maxPartitionBytes", "8m")
        .getOrCreate()
    )
    yield session
    session.stop()


def _binary_files(spark, directory: Path):
    return (
        spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(directory))
    )


@pytest.fixture(scope="module")
def fullres(spark):
    df = _binary_files(spark, FULLRES)
    df.createOrReplaceTempView("images")
    return df


@pytest.fixture(scope="module")
def registered(spark):
    return register(spark)


def _by_path(rows, column):
    return {local_path(r["path"]): r[column].asDict(recursive=True) for r in rows}


def test_sql_predict_on_paths_equals_cxrlake_predict(spark, fullres, registered):
    rows = spark.sql("SELECT path, predict(path) AS p FROM images").collect()
    assert len(rows) == 200
    got = _by_path(rows, "p")
    paths = sorted(got)
    assert all(p.startswith(str(FULLRES)) for p in paths)
    direct = cxrlake.predict(paths).to_pylist()
    for path, want in zip(paths, direct, strict=True):
        row = got[path]
        assert row["error"] is None and want["error"] is None, path
        assert row["probability"] == pytest.approx(want["probability"], abs=1e-6), path
        for key in ("predicted_label", "label_name", "model_name", "model_version"):
            assert row[key] == want[key], (path, key)


def test_sql_predict_on_image_bytes_equals_predict_on_paths(spark, fullres, registered):
    rows = spark.sql(
        "SELECT path, predict(content) AS b, predict(path) AS p FROM images "
        "WHERE path LIKE '%PNEUMONIA%' LIMIT 20"
    ).collect()
    assert len(rows) == 20
    for r in rows:
        b, p = r["b"].asDict(), r["p"].asDict()
        assert b["probability"] == pytest.approx(p["probability"], abs=1e-6)
        assert b["predicted_label"] == p["predicted_label"] and b["error"] is None


def test_sql_features_equals_cxrlake_features(spark, fullres, registered):
    rows = spark.sql(
        "SELECT path, features(path) AS f FROM images WHERE path LIKE '%NORMAL%' LIMIT 12"
    ).collect()
    got = _by_path(rows, "f")
    paths = sorted(got)
    model = cxrlake.Model()
    direct = cxrlake.features(paths, embedding=model.has_embedding).to_pylist()
    for path, want in zip(paths, direct, strict=True):
        row = got[path]
        assert (row["width"], row["height"]) == (want["width"], want["height"])
        assert row["mean_pixel_value"] == pytest.approx(want["mean_pixel_value"])
        assert row["quality_score"] == pytest.approx(want["quality_score"])
        if want["embedding"] is not None:
            assert row["embedding"] == pytest.approx(want["embedding"], abs=1e-5)


def test_pandas_iterator_fallback_gives_the_same_results(spark, fullres, registered):
    register(spark, name="predict_pd", features_name="features_pd", flavor="pandas")
    rows = spark.sql(
        "SELECT predict(path) AS a, predict_pd(path) AS p, predict_pd(content) AS c "
        "FROM images LIMIT 24"
    ).collect()
    assert len(rows) == 24
    for r in rows:
        a, p, c = r["a"].asDict(), r["p"].asDict(), r["c"].asDict()
        assert p["probability"] == pytest.approx(a["probability"], abs=1e-6)
        assert c["probability"] == pytest.approx(a["probability"], abs=1e-6)
        assert p["model_version"] == a["model_version"]


def test_bad_rows_give_an_error_not_a_failed_query(spark, registered):
    df = spark.createDataFrame(
        [("/no/such/file.jpeg", b"not an image"), (None, b"")], "path string, content binary"
    )
    rows = df.selectExpr("predict(path) AS p", "predict(content) AS c").collect()
    missing, null = rows
    assert missing["p"]["probability"] is None and "not found" in missing["p"]["error"]
    assert missing["c"]["probability"] is None and missing["c"]["error"]
    assert null["p"]["error"] == "null input"
    assert null["c"]["probability"] is None and null["c"]["error"]


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory) -> Path:
    """A landing zone like the UC volume: real images (symlinks to ../shared/data, never copied
    into the repo) plus a truncated JPEG, an empty file, a text file and a too-small image."""
    root = tmp_path_factory.mktemp("landing")
    for label in ("NORMAL", "PNEUMONIA"):
        (root / "train" / label).mkdir(parents=True)
        for src in sorted((TRAIN / label).iterdir())[:6]:
            (root / "train" / label / src.name).symlink_to(src)
    (root / "fullres" / "PNEUMONIA").mkdir(parents=True)
    big = sorted((FULLRES / "PNEUMONIA").iterdir())[0]
    (root / "fullres" / "PNEUMONIA" / big.name).symlink_to(big)
    good = sorted((TRAIN / "NORMAL").iterdir())[0].read_bytes()
    (root / "train" / "PNEUMONIA" / "truncated.jpeg").write_bytes(good[: len(good) // 3])
    (root / "train" / "NORMAL" / "empty.jpeg").write_bytes(b"")
    (root / "train" / "NORMAL" / "notes.txt").write_text("not an image\n")
    from PIL import Image

    Image.new("L", (40, 32), 128).save(root / "train" / "NORMAL" / "tiny.png")
    yield root
    shutil.rmtree(root)


# Spark's file sources skip zero-byte files, so empty.jpeg never reaches bronze on Spark (the
# local pipeline quarantines it as "empty file"); the other bad files are quarantined. notes.txt
# is not an image name (`cxrlake.files.is_image_name`): dropped, neither stored nor quarantined.
BAD_FILES = {"truncated.jpeg", "tiny.png"}


@pytest.fixture(scope="module")
def bronze(spark, source_dir):
    df = transforms.to_bronze(_binary_files(spark, source_dir), "run-1", WHEN)
    return df


def _sorted(table: pa.Table, *keys: str) -> list[dict]:
    return table.sort_by([(k, "ascending") for k in keys]).to_pylist()


def _mtime_ms(path: Path) -> dt.datetime:
    """Modification time at millisecond precision, as Hadoop's file listing reports it."""
    ms = path.stat().st_mtime_ns // 1_000_000
    seconds = dt.datetime.fromtimestamp(ms // 1000, dt.timezone.utc)
    return seconds.replace(microsecond=ms % 1000 * 1000)


def test_bronze_transform_has_the_exact_schema_and_the_local_rows(spark, source_dir, bronze):
    assert bronze.schema == schemas.BRONZE
    got = bronze.toArrow()
    assert got.schema.names == lake_schemas.BRONZE_METADATA.names
    files = sorted(
        p
        for p in source_dir.rglob("*")
        if p.is_file() and p.stat().st_size > 0 and is_image_name(p)
    )
    local = pa.table(
        {
            "path": [str(p) for p in files],
            "modificationTime": [_mtime_ms(p) for p in files],
            "length": [p.stat().st_size for p in files],
            "content": [p.read_bytes() for p in files],
        }
    )
    want = pa.table(lake.bronze_batch(local, "run-1", WHEN))
    assert _sorted(got, "file_path") == _sorted(want, "file_path")
    assert len(files) == 15 and got.num_rows == 15
    assert not {"empty.jpeg", "notes.txt"} & set(got["filename"].to_pylist())


def test_silver_transform_splits_good_images_and_quarantine(spark, bronze):
    frames = transforms.to_silver(bronze, processed_at=WHEN)
    assert frames.metadata.schema == schemas.SILVER_METADATA
    assert frames.features.schema == schemas.SILVER_FEATURES
    assert frames.quarantine.schema == schemas.SILVER_QUARANTINE
    metadata = frames.metadata.toArrow()
    features = frames.features.toArrow()
    quarantine = frames.quarantine.toArrow()
    assert metadata.num_rows == features.num_rows == 13
    reasons = dict(
        zip(quarantine["filename"].to_pylist(), quarantine["reason"].to_pylist(), strict=True)
    )
    assert set(reasons) == BAD_FILES
    assert reasons["tiny.png"] == "image 40x32 smaller than 64 px minimum side"
    assert all(reasons.values()) and set(quarantine["stage"].to_pylist()) == {"silver"}
    # the same rows as the local pipeline's transform on the same bronze rows
    local = lake.silver_batch(bronze.toArrow(), processed_at=WHEN)
    assert _sorted(metadata, "image_id") == _sorted(pa.table(local.metadata), "image_id")
    assert _sorted(quarantine, "image_id") == _sorted(pa.table(local.quarantine), "image_id")
    got_features = _sorted(features, "image_id")
    want_features = _sorted(pa.table(local.features), "image_id")
    for g, w in zip(got_features, want_features, strict=True):
        assert g["feature_vector"] == pytest.approx(w["feature_vector"], abs=1e-5)
        g.pop("feature_vector"), w.pop("feature_vector")
        assert g == w
    frames.metadata.sparkSession.catalog.clearCache()


def test_gold_transform_scores_silver_images_in_the_exact_schema(spark, bronze):
    frames = transforms.to_silver(bronze, processed_at=WHEN)
    scoring = transforms.gold_input(bronze, frames.metadata)
    predictions = transforms.to_gold_predictions(scoring, predicted_at=WHEN)
    assert predictions.schema == schemas.GOLD_PREDICTIONS
    got = predictions.toArrow()
    assert got.num_rows == 13
    want = lake.gold_predictions_batch(scoring.toArrow(), predicted_at=WHEN)
    for g, w in zip(_sorted(got, "image_id"), _sorted(pa.table(want), "image_id"), strict=True):
        assert g["prediction_probability"] == pytest.approx(w["prediction_probability"], abs=1e-6)
        g.pop("prediction_probability"), w.pop("prediction_probability")
        g.pop("confidence_score"), w.pop("confidence_score")
        assert g == w
    performance = transforms.model_performance(predictions, evaluated_at=WHEN)
    assert performance.schema == lake_schemas.GOLD_PERFORMANCE
    rows = performance.to_pylist()
    assert [(r["dataset_split"], r["total_samples"]) for r in rows] == [
        ("fullres", 1),
        ("train", 12),
    ]
    frames.metadata.sparkSession.catalog.clearCache()


def test_warehouse_udf_runs_as_sql_declares_it_under_sparks_pandas_udf_serializer(spark):
    """sql/30_predict_function.sql declares the batch UDF ``predict_image_json ... RETURNS STRING``
    and ``predict_image`` as ``from_json`` of it. Spark runs the handler here exactly so (an
    iterator pandas UDF of the declared type, Arrow batches through Spark's serializer) and the
    STRUCT equals `cxrlake.predict`; a NULL input gets an error, never a failed batch."""
    import re
    from collections.abc import Iterator

    import pandas as pd
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    text = (Path(__file__).resolve().parents[2] / "sql" / "30_predict_function.sql").read_text()
    returns = re.search(r"predict_image_json\(content BINARY\)\nRETURNS (\w+)\n", text).group(1)
    schema = re.search(r"from_json\(\n  [^\n]+\n  '([^']+)'", text).group(1)

    def handler(batches):
        yield from warehouse_udf.predict_handler(batches)

    # real types, not the strings of `from __future__ import annotations`: pandas_udf reads them
    handler.__annotations__ = {"batches": Iterator[pd.Series], "return": Iterator[pd.Series]}
    predict_image_json = pandas_udf(handler, returnType=returns)
    images = sorted((TRAIN / "PNEUMONIA").iterdir())[:3]
    rows = [(0, images[0].read_bytes()), (1, None), (2, images[1].read_bytes())]
    frame = spark.createDataFrame(rows, "n INT, content BINARY")
    got = [
        r["p"].asDict()
        for r in frame.select("n", F.from_json(predict_image_json("content"), schema).alias("p"))
        .orderBy("n")
        .collect()
    ]
    assert list(got[0]) == PREDICT_RESULT.names
    want = cxrlake.predict([str(images[0]), str(images[1])]).to_pylist()
    assert got[0]["probability"] == pytest.approx(want[0]["probability"], abs=1e-9)
    assert got[2]["predicted_label"] == want[1]["predicted_label"]
    assert got[2]["model_version"] == want[1]["model_version"] and got[2]["error"] is None
    assert got[1]["error"] == warehouse_udf.NOT_INGESTED and got[1]["probability"] is None

    # why not a STRUCT-typed batch UDF yielding dicts: this serializer refuses a Series for it
    def dicts(batches):
        for series in batches:
            yield pd.Series([{"probability": 0.5}] * len(series))

    dicts.__annotations__ = handler.__annotations__
    as_struct = pandas_udf(dicts, returnType="struct<probability: double>")
    with pytest.raises(Exception, match="UDF_RETURN_TYPE"):
        frame.select(as_struct("content")).collect()


def test_local_path_turns_spark_uris_into_paths():
    assert local_path("file:/work/a.jpeg") == "/work/a.jpeg"
    assert local_path("file:///work/a.jpeg") == "/work/a.jpeg"
    assert local_path("dbfs:/Volumes/c/s/v/a.jpeg") == "/Volumes/c/s/v/a.jpeg"
    assert local_path("/Volumes/c/s/v/a.jpeg") == "/Volumes/c/s/v/a.jpeg"
    assert local_path("s3://bucket/a.jpeg") == "s3://bucket/a.jpeg"
    assert local_path(None) is None
