"""Stored site thresholds are range-checked where they are read, and site ids are plain ASCII
(issue 25): a row copied into ``gold.site_thresholds`` by hand with NaN, inf, 7 or -1 used to
label every film the same with exit 0."""

from __future__ import annotations

import datetime as dt
import math

import pyarrow as pa
import pytest
from deltalake import write_deltalake

import cxrlake
from cxrlake.calibration_service import (
    SITE_THRESHOLDS_SCHEMA,
    CalibrationError,
    latest_site_threshold,
    validate_site_id,
)
from cxrlake.lakehouse.site_thresholds import site_threshold
from cxrlake.lakehouse.storage import Lakehouse
from cxrlake.medallion import schemas

MODEL = cxrlake.Model(None)


def _rows(*thresholds: float, site: str = "site_a") -> pa.Table:
    rows = [
        {
            "site_id": site,
            "version": version,
            "model_name": MODEL.name,
            "model_version": MODEL.version,
            "threshold": threshold,
            "calibrated_at": dt.datetime(2026, 1, version, tzinfo=dt.timezone.utc),
        }
        for version, threshold in enumerate(thresholds, start=1)
    ]
    return pa.Table.from_pylist(rows, schema=SITE_THRESHOLDS_SCHEMA)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 7.0, -1.0, 0.0, 1.0])
def test_a_stored_threshold_outside_0_1_is_refused_naming_the_row(bad):
    with pytest.raises(CalibrationError) as info:
        latest_site_threshold(_rows(0.4, bad), "site_a", MODEL.name, MODEL.version)
    message = str(info.value)
    assert "gold.site_thresholds" in message and "site_id='site_a'" in message
    assert "version 2" in message and MODEL.version in message


def test_the_latest_good_threshold_is_used():
    got = latest_site_threshold(_rows(0.9, 0.35), "site_a", MODEL.name, MODEL.version)
    assert got is not None and got.threshold == 0.35 and got.version == 2


def test_the_local_read_and_the_pipeline_refuse_a_nan_row(tmp_path, shared_data):
    import shutil

    from cxrlake.lakehouse.pipeline import run_pipeline

    lakehouse = tmp_path / "lh"
    path = schemas.SITE_THRESHOLDS.path(lakehouse, "dev")
    write_deltalake(path, _rows(math.nan))
    with pytest.raises(CalibrationError, match="threshold nan is not a probability"):
        site_threshold(lakehouse, "site_a", MODEL)
    src = tmp_path / "src" / "train" / "NORMAL"
    src.mkdir(parents=True)
    jpeg = sorted((shared_data / "chest_xray" / "train" / "NORMAL").glob("*.jpeg"))[0]
    shutil.copyfile(jpeg, src / jpeg.name)
    with pytest.raises(CalibrationError, match="site_id='site_a'"):
        run_pipeline([tmp_path / "src"], lakehouse, site="site_a", progress=False)
    lake = Lakehouse(lakehouse, "dev")
    assert not lake.exists(schemas.PREDICTIONS) or lake.read(schemas.PREDICTIONS).num_rows == 0


@pytest.mark.parametrize(
    "site",
    [
        "..",
        "a..b",
        ".hidden",
        "trailing.",
        "s\u0456te_a",  # Cyrillic i: looks like site_a
        "site_\uff41",  # fullwidth a
        "caf\u00e9",
        "a/b",
        "a b",
        "",
        "x" * 65,
    ],
)
def test_site_ids_are_plain_ascii(site):
    with pytest.raises(CalibrationError, match="invalid site id"):
        validate_site_id(site)


@pytest.mark.parametrize("site", ["site_a", "dev_check", "st-mary.2", "A", "x" * 64])
def test_plain_site_ids_are_accepted(site):
    assert validate_site_id(site) == site


def test_sql_json_output_of_a_nan_row_is_strict_json(tmp_path):
    """`cxrlake sql --format json|jsonl` over a hand-copied NaN threshold prints null, not the
    `NaN` a browser's or jq's JSON parser rejects."""
    import json

    from cxrlake.lakehouse.sql import format_result, query

    lakehouse = tmp_path / "lh"
    write_deltalake(schemas.SITE_THRESHOLDS.path(lakehouse, "dev"), _rows(math.nan, math.inf))
    table = query(lakehouse, "SELECT version, threshold FROM gold.site_thresholds ORDER BY 1")

    def strict(text: str):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON output"))

    assert strict(format_result(table, "json")) == [
        {"version": 1, "threshold": None},
        {"version": 2, "threshold": None},
    ]
    assert [strict(line)["threshold"] for line in format_result(table, "jsonl").splitlines()] == [
        None,
        None,
    ]
