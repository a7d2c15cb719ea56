"""The catalog port on Spark (`cxrlake.spark.catalog.SparkCatalog`, Delta on PySpark local with
three-level names) against the local adapter (`LocalCatalog`): the same members, one Delta
commit per write and none when empty, a rule's SQL run as-is, and the review store
(`cxrlake.review.service.CatalogReviewStore`) giving the same rows over either catalog.

One Spark session for the module (the `delta_spark` fixture); the lakehouse is a real pipeline
run on a few films, copied into Spark through the port itself."""

from __future__ import annotations

import datetime as dt
import inspect
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
from review_support import build_lakehouse

from cxrlake import calibration_service
from cxrlake.catalog import Catalog
from cxrlake.lakehouse.catalog import LocalCatalog
from cxrlake.medallion import rules, schemas
from cxrlake.review.service import CatalogReviewStore
from cxrlake.review.tables import REVIEW_TABLES
from cxrlake.spark.catalog import SparkCatalog
from cxrlake.spark.deployment import Deployment

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

COPIED = (schemas.BRONZE, schemas.SILVER, schemas.PREDICTIONS, schemas.PERFORMANCE)
TIMES = {"valid_from", "valid_to", "feedback_timestamp", "evaluated_at"}
"""Columns stamped with the time of the write (differ between two runs of the same service)."""


@pytest.fixture(scope="module")
def lakehouse(shared_data, tmp_path_factory):
    return build_lakehouse(shared_data, tmp_path_factory.mktemp("catalog-spark"))[0]


def _spark_catalog(spark, prefix: str) -> SparkCatalog:
    names = Deployment(
        "spark_catalog",
        bronze=f"{prefix}_bronze",
        silver=f"{prefix}_silver",
        gold=f"{prefix}_gold",
        models=f"{prefix}_models",
    )
    for key in ("bronze", "silver", "gold"):
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS spark_catalog.{names.schema(key)}")
    return SparkCatalog(spark, names)


def _history(catalog: SparkCatalog, spec: schemas.TableSpec) -> list[str]:
    rows = catalog.spark.sql(f"DESCRIBE HISTORY {catalog.name(spec)}").collect()
    return [r["userMetadata"] for r in sorted(rows, key=lambda r: r["version"])]


def test_the_spark_adapter_has_every_member_of_the_port_with_its_parameters():
    members = [n for n, v in vars(Catalog).items() if callable(v) and not n.startswith("_")]
    for name in members:
        want = list(inspect.signature(getattr(Catalog, name)).parameters)
        assert list(inspect.signature(getattr(SparkCatalog, name)).parameters) == want, name
    assert SparkCatalog.engine == "spark"


def test_spark_catalog_writes_one_delta_commit_each_and_none_when_empty(delta_spark):
    catalog = _spark_catalog(delta_spark, "port")
    spec = schemas.SITE_THRESHOLDS
    assert not catalog.exists(spec) and catalog.read(spec).num_rows == 0
    catalog.ensure(spec)
    properties = delta_spark.sql(f"SHOW TBLPROPERTIES {catalog.name(spec)}").collect()
    assert {r["key"]: r["value"] for r in properties}["delta.enableChangeDataFeed"] == "true"
    at = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    rng = np.random.default_rng(7)
    labels = np.array([1] * 40 + [0] * 40)
    scores = np.clip(labels * 0.5 + rng.uniform(0, 0.5, 80), 0, 1)
    result = calibration_service.calibrate_scores(
        "s_a", labels, scores, target_sensitivity=0.9, model_name="m", model_version="1"
    )
    rows = [
        calibration_service.site_threshold_row(replace(result, site_id=site), 1, None, at)
        for site in ("s_a", "s_b", "s_c")
    ]
    data = pa.Table.from_pylist(rows, schema=spec.arrow_schema)
    start = len(_history(catalog, spec))
    assert catalog.append(spec, data, operation="t-append") == 3
    assert catalog.merge(spec, data.slice(0, 2), operation="t-merge") == 2
    assert catalog.delete(spec, {"site_id": ["s_a", "s_b"], "version": 1}, operation="t-del") == 2
    assert _history(catalog, spec)[start:] == ["t-append", "t-merge", "t-del"]
    assert catalog.append(spec, spec.arrow_schema.empty_table(), operation="t") == 0
    assert catalog.merge(spec, spec.arrow_schema.empty_table(), operation="t") == 0
    assert catalog.delete(spec, {"site_id": []}, operation="t") == 0
    assert catalog.delete(spec, {"site_id": "s_c", "version": 2}, operation="t") == 0
    assert len(_history(catalog, spec)) == start + 3
    kept = catalog.read(spec, ["site_id", "threshold"], {"site_id": "s_c"})
    assert kept.schema == pa.schema([spec.arrow_schema.field(c) for c in ("site_id", "threshold")])
    assert kept.column(0).to_pylist() == ["s_c"]


def test_a_rule_and_the_review_store_give_the_same_rows_over_both_catalogs(lakehouse, delta_spark):
    local = LocalCatalog.at(lakehouse)
    spark = _spark_catalog(delta_spark, "review")
    for spec in COPIED:  # the lakehouse into Spark, through the port
        spark.ensure(spec)
        assert spark.append(spec, local.read(spec), operation="copy") == local.read(spec).num_rows

    bronze = local.read(schemas.BRONZE, list(rules.STATE_COLUMNS["bronze"]))
    moved = bronze.set_column(
        2, "file_path", pa.array(["/moved/" + p for p in bronze["file_path"].to_pylist()])
    ).slice(0, 1)
    relations = {"incoming": moved, "bronze": bronze}
    assert (
        spark.query(rules.BRONZE_STAT_UPDATES, relations).to_pylist()
        == local.query(rules.BRONZE_STAT_UPDATES, relations).to_pylist()
        != []
    )

    def run(catalog) -> dict[str, object]:
        store = CatalogReviewStore(catalog)
        store.ensure_tables()
        added = store.sync_history()
        item = next(p for p in store.predictions() if p["predicted_label"] == p["true_label"])
        verdict = {
            "feedback_id": "c" * 32,
            "prediction_id": item["prediction_id"],
            "feedback_type": "disagree",
            "correct_label": "NORMAL" if item["predicted_label"] == 1 else "PNEUMONIA",
        }
        return {
            "added": added,
            "created": store.record_verdict(verdict, "dr.ana")[1],
            "written": store.write_agreement(),
            "predictions": sorted(store.predictions(), key=lambda r: r["prediction_id"]),
            "image": store.image(item["image_id"]),
            **{
                spec.name: sorted(
                    (
                        {k: v for k, v in r.items() if k not in TIMES}
                        for r in catalog.read(spec).to_pylist()
                    ),
                    key=repr,
                )
                for spec in REVIEW_TABLES
            },
        }

    on_spark = run(spark)
    assert on_spark == run(local)
    assert on_spark["created"] is True and on_spark["written"] == 1
    # the verdict: one commit to the feedback table, one merge of the label history
    assert _history(spark, schemas.FEEDBACK).count("review-verdict") == 1
    assert _history(spark, schemas.LABEL_HISTORY).count("review-label-history") == 2
