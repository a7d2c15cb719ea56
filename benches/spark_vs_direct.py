"""Throughput of ``predict`` through PySpark (local mode, ``mapInArrow`` on paths) against
``cxrlake.predict`` called directly on the same images, side by side in one run.

    python benches/spark_vs_direct.py --images ../shared/data/chest_xray_fullres

Both sides use every core: directly, the Rust core's thread pool spreads one batch over them; in
Spark, ``--slots`` tasks run at once, each with ``cores / slots`` Rust threads (what
``CXRLAKE_NUM_THREADS`` does on a cluster), so neither side oversubscribes the CPU. Rounds
alternate (direct, Spark, direct, ...) after a warm-up of each (Python workers started, model
loaded), and the report gives the median images/s of each side and their ratio. The machine may be
shared and noisy: compare the ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

import cxrlake
from cxrlake.spark.udfs import PREDICT_RESULT, predict_array

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}


def image_paths(directory: Path, limit: int | None) -> list[str]:
    """Image files under ``directory`` (recursive), sorted, at most ``limit``."""
    paths = sorted(str(p) for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return paths[:limit] if limit else paths


def predict_paths(threads: int):
    """``mapInArrow`` function: batches of ``path`` -> batches of the ``predict`` struct."""

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            result = predict_array(batch.column("path"), None, threads)
            yield pa.RecordBatch.from_struct_array(result)

    return fn


def run_direct(paths: list[str]) -> float:
    start = time.perf_counter()
    result = cxrlake.predict(paths)
    elapsed = time.perf_counter() - start
    errors = [e for e in result.column("error").to_pylist() if e]
    if errors:
        raise RuntimeError(f"direct predict failed on {len(errors)} images: {errors[:3]}")
    return len(paths) / elapsed


def run_spark(spark, paths: list[str], partitions: int, threads: int) -> float:
    from cxrlake.spark.schemas import spark_type

    schema = spark_type(PREDICT_RESULT)
    # parallelize, not repartition: no shuffle between the paths and the UDF
    rows = spark.sparkContext.parallelize([(p,) for p in paths], partitions)
    df = spark.createDataFrame(rows, "path string")
    df = df.mapInArrow(predict_paths(threads), schema)
    start = time.perf_counter()
    errors = df.where("error IS NOT NULL").count()  # forces every row through the UDF
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"Spark predict failed on {errors} images")
    return len(paths) / elapsed


def _noop(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        yield pa.RecordBatch.from_pydict({"n": pa.array([batch.num_rows], pa.int64())})


def spark_job_overhead(spark, paths: list[str], partitions: int) -> float:
    """Seconds of a job that does everything `run_spark` does except scoring."""
    rows = spark.sparkContext.parallelize([(p,) for p in paths], partitions)
    df = spark.createDataFrame(rows, "path string").mapInArrow(_noop, "n long")
    start = time.perf_counter()
    df.count()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_images = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray_fullres"
    parser.add_argument("--images", type=Path, default=default_images)
    parser.add_argument("--limit", type=int, default=None, help="use at most this many images")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per side")
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="score the image list this many times per round (amortises Spark's fixed per-job "
        "cost, reported separately, as a real job over thousands of files does)",
    )
    cores = os.cpu_count() or 1
    parser.add_argument("--slots", type=int, default=cores, help="Spark task slots (local[N])")
    parser.add_argument(
        "--threads", type=int, default=None, help="Rust threads per task (default cores / slots)"
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="partitions of the paths (default one per slot: each task costs a fixed ~0.1 s here)",
    )
    args = parser.parse_args()

    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers run this interpreter
    images = image_paths(args.images, args.limit)
    paths = images * args.repeat
    threads = args.threads or max(1, cores // args.slots)
    partitions = args.partitions or args.slots
    spark = (
        SparkSession.builder.master(f"local[{args.slots}]")
        .appName("cxrlake-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", str(args.slots * 2))
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "64")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    print(
        f"{len(images)} images from {args.images}, {args.repeat}x per round; {cores} cores; "
        f"Spark local[{args.slots}] with "
        f"{threads} Rust thread(s) per task, {partitions} partitions; direct: cxrlake.predict "
        "with the default pool"
    )
    run_direct(paths)  # warm-up: model loaded, pools started
    run_spark(spark, paths, partitions, threads)  # warm-up: Python workers, model per worker
    direct, via_spark = [], []
    for i in range(args.rounds):
        direct.append(run_direct(paths))
        via_spark.append(run_spark(spark, paths, partitions, threads))
        print(f"round {i + 1}: direct {direct[-1]:7.1f} img/s   spark {via_spark[-1]:7.1f} img/s")
    overhead = statistics.median(spark_job_overhead(spark, paths, partitions) for _ in range(3))
    print(f"Spark fixed cost per job (no-op mapInArrow over the same rows): {overhead:.2f} s")
    d, s = statistics.median(direct), statistics.median(via_spark)
    print(f"median: direct {d:.1f} img/s, spark mapInArrow {s:.1f} img/s, ratio {s / d:.2f}x")
    spark.stop()


if __name__ == "__main__":
    main()
