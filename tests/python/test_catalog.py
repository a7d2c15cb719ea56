"""The catalog port (`cxrlake.catalog.Catalog`) and its local adapter (`LocalCatalog`): reads as
Arrow, a rule's SQL over Arrow relations, one commit per write (none when empty), and the site
threshold service written over the port."""

from __future__ import annotations

import datetime as dt
import inspect

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from cxrlake import calibration_service as service
from cxrlake.catalog import Catalog
from cxrlake.lakehouse.catalog import LocalCatalog
from cxrlake.medallion import schemas

SPEC = schemas.SITE_THRESHOLDS


def test_the_local_adapter_has_every_member_of_the_port_with_its_parameters():
    members = [n for n, v in vars(Catalog).items() if callable(v) and not n.startswith("_")]
    assert {"read", "query", "append", "merge", "delete", "ensure"} <= set(members)
    for name in members:
        want = list(inspect.signature(getattr(Catalog, name)).parameters)
        assert list(inspect.signature(getattr(LocalCatalog, name)).parameters) == want, name
    assert LocalCatalog.engine == "local"


def _result(site: str = "site_a") -> service.CalibrationResult:
    rng = np.random.default_rng(7)
    labels = np.array([1] * 40 + [0] * 40)
    scores = np.clip(labels * 0.5 + rng.uniform(0, 0.5, 80), 0, 1)
    return service.calibrate_scores(
        site,
        labels,
        scores,
        target_sensitivity=0.9,
        model_name="m",
        model_version="1",
        calibration_id="c1",
    )


def test_local_catalog_reads_writes_one_commit_each_and_runs_sql(tmp_path):
    catalog = LocalCatalog.at(tmp_path)
    assert not catalog.exists(SPEC)
    assert catalog.read(SPEC).schema == SPEC.arrow_schema and catalog.read(SPEC).num_rows == 0
    catalog.ensure(SPEC)
    table = DeltaTable(catalog.lakehouse.path(SPEC))
    start = table.version()
    row = service.site_threshold_row(
        _result(), 1, None, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    )
    assert (
        catalog.append(SPEC, pa.Table.from_pylist([row], schema=SPEC.arrow_schema), operation="t")
        == 1
    )
    assert catalog.append(SPEC, SPEC.arrow_schema.empty_table(), operation="t") == 0
    changed = pa.Table.from_pylist([{**row, "threshold": 0.25}], schema=SPEC.arrow_schema)
    assert catalog.merge(SPEC, changed, operation="t") == 1
    table.update_incremental()
    assert table.version() == start + 2  # one commit per non-empty write
    assert catalog.read(SPEC, ["threshold"]).column(0).to_pylist() == [0.25]
    answer = catalog.query(
        "SELECT site_id, count(*) AS n FROM t GROUP BY site_id", {"t": catalog.read(SPEC)}
    )
    assert answer.to_pylist() == [{"site_id": "site_a", "n": 1}]


def test_local_catalog_each_write_is_one_delta_commit_and_none_when_empty(tmp_path):
    """Delta history: append, merge and delete each add exactly one commit naming its operation;
    an empty append or merge and a delete that matches nothing (or selects nothing) add none."""
    catalog = LocalCatalog.at(tmp_path)
    catalog.ensure(SPEC)
    table = DeltaTable(catalog.lakehouse.path(SPEC))

    def commits() -> list[str]:
        table.update_incremental()
        return [c.get("operation") for c in reversed(table.history())]

    at = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    rows = [
        service.site_threshold_row(_result(site), 1, None, at) for site in ("s_a", "s_b", "s_c")
    ]
    data = pa.Table.from_pylist(rows, schema=SPEC.arrow_schema)
    start = len(commits())
    assert catalog.append(SPEC, data, operation="t-append") == 3
    assert catalog.merge(SPEC, data.slice(0, 2), operation="t-merge") == 2
    assert catalog.delete(SPEC, {"site_id": ["s_a", "s_b"], "version": 1}, operation="t") == 2
    assert len(commits()) == start + 3
    assert catalog.append(SPEC, SPEC.arrow_schema.empty_table(), operation="t") == 0
    assert catalog.merge(SPEC, SPEC.arrow_schema.empty_table(), operation="t") == 0
    assert catalog.delete(SPEC, {"site_id": []}, operation="t") == 0
    assert catalog.delete(SPEC, {"site_id": "s_z"}, operation="t") == 0
    assert catalog.delete(SPEC, {"site_id": "s_c", "version": 2}, operation="t") == 0
    assert len(commits()) == start + 3
    assert catalog.read(SPEC, ["site_id"]).column(0).to_pylist() == ["s_c"]
    with pytest.raises(TypeError, match="site_id"):
        catalog.delete(SPEC, {"site_id": 3}, operation="t")


def test_the_site_threshold_service_stores_once_over_the_port(tmp_path):
    catalog = LocalCatalog.at(tmp_path)
    first = service.store_calibration(catalog, _result(), ["site_a"])
    again = service.store_calibration(catalog, _result(), ["site_a"])
    assert (first.version, first.stored) == (1, True)
    assert (again.version, again.stored) == (1, False)
    assert catalog.read(SPEC).num_rows == 1
    found = service.latest_site_threshold(
        service.stored_versions(catalog, "site_a", "m", "1"), "site_a", "m", "1"
    )
    assert found is not None and found.threshold == pytest.approx(first.threshold)
