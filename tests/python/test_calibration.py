"""Calibration: the model's operating point (temperature, shift-robust threshold rule) and the
per-site operating point of ``cxrlake calibrate`` on a real local lakehouse.

Real images from ``$CXRLAKE_SHARED_DATA``, the real pipeline (delta-rs), the real Rust core and
onnxruntime; nothing is mocked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

import cxrlake
from cxrlake import calibration
from cxrlake import calibration_service as service
from cxrlake.cli import main as cli_main
from cxrlake.lakehouse import site_thresholds as local_thresholds
from cxrlake.spark import site_thresholds as spark_stored
from cxrlake.threshold import SiteThreshold
from cxrlake.training import operating_point as op
from cxrlake.training.export import (
    HEAD_BIAS_KEY,
    add_heatmap_output,
    apply_temperature,
    onnx_session,
    read_metadata,
)

# ------------------------------------------------------------------------------------------------
# Statistics


def test_wilson_interval_matches_the_published_values():
    # Newcombe (1998), table I: 81/263 -> 0.2553-0.3662; 0/10 -> 0-0.2775.
    low, high = service.wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    low, high = service.wilson_interval(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775


def test_films_needed_for_a_tighter_interval():
    n = service.films_for_half_width(0.95, 0.025)
    low, high = service.wilson_interval(round(0.95 * n), n)
    assert (high - low) / 2 <= 0.025
    assert service.films_for_half_width(0.95, 0.05) < n
    assert 250 < n < 350  # ~ z^2 p (1 - p) / w^2 = 292


def test_threshold_for_sensitivity_keeps_the_target_and_is_the_highest():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(200, int), np.zeros(200, int)]
    scores = np.r_[rng.beta(5, 2, 200), rng.beta(2, 5, 200)]
    t = service.threshold_for_sensitivity(labels, scores, 0.95)
    assert (scores[labels == 1] >= t).mean() >= 0.95
    # t sits just below the last pneumonia film it must keep: the next one up loses the target.
    kept = np.sort(scores[labels == 1][scores[labels == 1] >= t])
    assert (scores[labels == 1] >= kept[0]).mean() >= 0.95
    assert (scores[labels == 1] >= kept[1]).mean() < 0.95


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.ones(80, int), "only PNEUMONIA films"),
        (np.r_[np.ones(15, int), np.zeros(60, int)], "at least 30 PNEUMONIA"),
        (np.r_[np.ones(60, int), np.zeros(10, int)], "and 30 NORMAL films are needed"),
    ],
)
def test_calibration_refuses_films_that_cannot_support_a_threshold(labels, message):
    scores = np.linspace(0, 1, len(labels))
    with pytest.raises(service.CalibrationError, match=message):
        service.calibrate_scores("site_a", labels, scores, target_sensitivity=0.95)


def test_a_high_target_needs_more_pneumonia_films():
    labels = np.r_[np.ones(60, int), np.zeros(60, int)]
    with pytest.raises(service.CalibrationError, match="at least 100 PNEUMONIA"):
        service.calibrate_scores("site_a", labels, np.linspace(0, 1, 120), target_sensitivity=0.99)


# ------------------------------------------------------------------------------------------------
# The model's operating point


def test_temperature_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 4.0, 40_000)
    labels = rng.random(40_000) < op.sigmoid(logits / 2.5)
    assert op.fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)


def test_shift_averaged_rule_leaves_the_edge_of_an_in_distribution_gap():
    # Unshifted: separable with a wide gap (negatives <= -1, positives >= 5). Under the shifts,
    # the negatives move up into the gap. The former rule (sensitivity >= 0.98 unshifted) sits at
    # the gap's upper edge... of the positives; the shift-averaged rule moves towards where the
    # shifted classes balance, and on the unshifted split stays inside the gap.
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(300, int), np.zeros(300, int)]
    base = np.r_[rng.uniform(5, 9, 300), rng.uniform(-6, -1, 300)]
    logits = {
        "none": base,
        "noise": base + np.r_[np.zeros(300), rng.uniform(0, 6, 300)],
        "blur": base + np.r_[np.zeros(300), rng.uniform(0, 4, 300)],
    }
    t = op.shift_averaged_balanced_threshold(logits, y)
    assert -1 < t < 5  # inside the unshifted gap: both unshifted rates are perfect
    at = op.evaluate_threshold(logits, y, t)
    assert at["unshifted_sensitivity"] == at["unshifted_specificity"] == 1.0
    # and it is the better balanced point under shift than the gap's lower edge
    edge = op.evaluate_threshold(logits, y, -0.99)
    assert at["mean_specificity"] > edge["mean_specificity"]
    # the middle of the maximising set, not one of its ends
    sens, spec = op._rates(logits, y)
    score = ((sens + spec) / 2).mean(axis=0)
    best = op.LOGIT_GRID[score >= score.max() - 1e-12]
    assert best.min() < t < best.max() or best.min() == best.max() == t


def test_temperature_folds_into_the_head_and_keeps_the_heatmap_identity(tmp_path):
    from make_tiny_model import write_model

    path = tmp_path / "tiny.onnx"
    write_model(path, size=64, name="tiny", version="1", threshold=0.5)
    add_heatmap_output(path)
    x = np.random.default_rng(3).normal(0, 1, (6, 3, 64, 64)).astype(np.float32)

    def logits_and_gap(p):
        prob, heatmap = onnx_session(p).run(["probability", "heatmap"], {"input": x})
        z = float(read_metadata(p)[HEAD_BIAS_KEY]) + heatmap.reshape(6, -1).mean(1)
        return z, np.abs(op.sigmoid(z) - prob).max()

    before, gap = logits_and_gap(path)
    assert gap < 1e-6
    apply_temperature(path, 2.0)
    after, gap = logits_and_gap(path)
    assert gap < 1e-6
    np.testing.assert_allclose(after, before / 2.0, rtol=1e-5, atol=1e-6)
    assert float(read_metadata(path)["cxrlake.temperature"]) == pytest.approx(2.0)


def test_shifted_validation_is_deterministic_and_shifts():
    from cxrlake.training.shift import SHIFTS, shifted_inputs

    pixels = np.random.default_rng(4).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    for name in SHIFTS:
        a, b = shifted_inputs(pixels, name), shifted_inputs(pixels, name)
        np.testing.assert_array_equal(a, b)
        assert a.shape == (3, 3, 32, 32)
        if name != "none":
            assert not np.array_equal(a, shifted_inputs(pixels, "none")), name


# ------------------------------------------------------------------------------------------------
# Site calibration on a real lakehouse


def _site_folder(root: Path, fullres_paths: list[str], per_class: int) -> Path:
    """``root/site_a/{NORMAL,PNEUMONIA}/`` with ``per_class`` full-resolution films each."""
    site = root / "site_a"
    for label in ("NORMAL", "PNEUMONIA"):
        (site / label).mkdir(parents=True)
        for path in [p for p in fullres_paths if f"/{label}/" in p][:per_class]:
            shutil.copy(path, site / label / Path(path).name)
    return site


def _pipeline(lakehouse: Path, source: Path) -> None:
    args = ["pipeline", "run", "--source", str(source), "--lakehouse", str(lakehouse)]
    assert cli_main(args) == 0


@pytest.fixture(scope="module")
def site_lake(tmp_path_factory, fullres_paths):
    root = tmp_path_factory.mktemp("site")
    site = _site_folder(root / "data", fullres_paths, per_class=40)
    _pipeline(root / "lake", site)
    return root / "lake", site


def test_calibrate_stores_a_versioned_site_threshold(site_lake, capsys):
    lake, _ = site_lake
    args = ["calibrate", "--lakehouse", str(lake), "--site", "site_a", "--split", "site_a"]
    # the shared films trained the shipped model: refused unless asked for (see below)
    args.append("--include-development-films")
    assert cli_main([*args, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["stored"] and first["version"] == 1
    assert first["n_pneumonia"] == first["n_normal"] == 40
    assert first["sensitivity"] >= 0.95
    low, high = first["sensitivity_ci"]
    assert low < first["sensitivity"] <= high
    assert first["pneumonia_films_needed"] > 40  # +-0.025 needs more than 40 films
    # An identical re-run writes nothing; another target makes version 2.
    assert cli_main([*args, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert not again["stored"] and again["version"] == 1
    assert cli_main([*args, "--json", "--target-sensitivity", "0.975"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2
    table = DeltaTable(str(lake / "healthcare_catalog_dev" / "gold" / "site_thresholds"))
    rows = table.to_pyarrow_table().sort_by("version").to_pylist()
    assert [r["version"] for r in rows] == [1, 2]
    assert table.metadata().configuration["delta.enableChangeDataFeed"] == "true"

    stored = local_thresholds.site_threshold(lake, "site_a")
    assert stored.version == 2 and stored.threshold == pytest.approx(rows[1]["threshold"])
    assert local_thresholds.site_threshold(lake, "site_b") is None


def test_calibrate_refuses_development_films_or_warns_that_they_measure_fit(
    site_lake, tiny_model_path, tmp_path, capsys
):
    lake, _ = site_lake
    base = ["calibrate", "--lakehouse", str(lake), "--site", "dev_check", "--dry-run"]
    assert cli_main(base) == 1
    err = capsys.readouterr().err
    assert "refused" in err and "80 of 80 films are from the model's development set" in err
    assert "--include-development-films" in err
    assert cli_main([*base, "--include-development-films"]) == 0
    report = capsys.readouterr().out
    assert report.startswith("WARNING: 80 of 80 films are from the model's development set")
    assert "measure how the model fits its own training films, not how it performs" in report
    assert cli_main([*base, "--include-development-films", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["development_films"] == 80 and "WARNING" in captured.err
    # A model without a development list (not trained on these films): no refusal, no warning.
    unseen = calibration.calibrate_site(
        lake,
        "dev_check",
        model=tiny_model_path,
        dry_run=True,
        target_sensitivity=0.5,
        min_per_class=1,
    )
    assert unseen.development_films == 0 and "WARNING" not in unseen.report()


def test_predict_uses_and_records_a_site_threshold(site_lake):
    lake, site = site_lake
    stored = local_thresholds.site_threshold(lake, "site_a")
    if stored is None:
        calibration.calibrate_site(
            lake, "site_a", splits=["site_a"], include_development_films=True
        )
        stored = local_thresholds.site_threshold(lake, "site_a")
    paths = sorted(str(p) for p in site.glob("*/*.jpeg"))
    default = cxrlake.predict(paths)
    assert "threshold" not in default.schema.names
    batch = cxrlake.predict(paths, threshold=stored)
    probs = np.array(batch.column("probability").to_pylist())
    expected = [int(p >= stored.threshold) for p in probs]
    assert batch.column("predicted_label").to_pylist() == expected
    assert set(batch.column("threshold_source").to_pylist()) == {stored.source}
    assert set(batch.column("threshold").to_pylist()) == {stored.threshold}
    fixed = cxrlake.predict(paths[:2], threshold=0.5)
    assert fixed.column("threshold_source").to_pylist() == ["argument", "argument"]
    with pytest.raises(cxrlake.exceptions.InvalidArgumentError, match="probability in"):
        cxrlake.predict(paths[:1], threshold=1.5)


def test_a_threshold_of_another_model_version_is_refused(site_lake):
    lake, site = site_lake
    other = SiteThreshold("site_a", 1, 0.5, "cxrlake-pneumonia-effnetlite0", "0.0.0")
    with pytest.raises(cxrlake.exceptions.InvalidArgumentError, match="calibrated for"):
        cxrlake.predict([str(next(site.glob("*/*.jpeg")))], threshold=other)


def test_calibrate_refuses_contradicting_and_missing_labels(tmp_path, fullres_paths, capsys):
    site = _site_folder(tmp_path / "data", fullres_paths, per_class=35)
    # The same bytes filed under both folders.
    normal = sorted((site / "NORMAL").iterdir())[0]
    shutil.copy(normal, site / "PNEUMONIA" / f"copy_{normal.name}")
    _pipeline(tmp_path / "lake", site)
    base = ["calibrate", "--lakehouse", str(tmp_path / "lake"), "--site", "site_a"]
    assert cli_main(base) == 1
    err = capsys.readouterr().err
    assert "refused" in err and "filed under both NORMAL and PNEUMONIA" in err
    assert cli_main([*base, "--split", "elsewhere"]) == 1
    assert "no labelled films" in capsys.readouterr().err
    from cxrlake.lakehouse.storage import Lakehouse

    assert Lakehouse(tmp_path / "lake").count(service.site_thresholds_spec()) == 0


def test_predict_threshold_column_types(site_lake):
    _, site = site_lake
    batch = cxrlake.predict([str(next(site.glob("*/*.jpeg")))], threshold=0.3)
    assert batch.schema.field("threshold").type == pa.float64()
    assert batch.schema.field("threshold_source").type == pa.string()


def _write_verdicts(lake: Path, rows: list[dict]) -> None:
    from cxrlake.lakehouse.storage import Lakehouse
    from cxrlake.review.store import LocalStore
    from cxrlake.review.tables import HISTORY

    LocalStore(lake).ensure_tables()  # Lakehouse.append writes to existing tables only
    Lakehouse(lake).append(HISTORY, pa.Table.from_pylist(rows, schema=HISTORY.arrow_schema))


def test_calibrate_with_radiologist_verdicts(tmp_path, fullres_paths, capsys):
    import datetime as dt

    site = _site_folder(tmp_path / "data", fullres_paths, per_class=35)
    lake = tmp_path / "lake"
    _pipeline(lake, site)
    capsys.readouterr()
    from cxrlake.lakehouse.storage import Lakehouse
    from cxrlake.medallion.schemas import BRONZE

    bronze = Lakehouse(lake).read(BRONZE, columns=["image_id", "category"]).to_pylist()
    now = dt.datetime.now(dt.timezone.utc)

    def verdict(row: dict, label: str) -> dict:
        return {
            "image_id": row["image_id"],
            "label": ("NORMAL", "PNEUMONIA").index(label),
            "label_name": label,
            "source": "radiologist_1",
            "feedback_id": "f" * 32,
            "valid_from": now,
            "valid_to": None,
            "is_current": True,
        }

    base = ["calibrate", "--lakehouse", str(lake), "--site", "site_a", "--labels", "verdicts"]
    base.append("--include-development-films")
    # Verdicts agreeing with the folders: the reviewed films are the site's films.
    _write_verdicts(lake, [verdict(r, r["category"]) for r in bronze])
    assert cli_main([*base, "--json", "--dry-run"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["label_source"] == "verdicts" and result["n_normal"] == 35
    # One verdict contradicting its folder: refused, naming the problem.
    flipped = bronze[0]
    other = "NORMAL" if flipped["category"] == "PNEUMONIA" else "PNEUMONIA"
    later = now + dt.timedelta(seconds=1)
    _write_verdicts(lake, [{**verdict(flipped, other), "valid_from": later}])
    table = DeltaTable(str(lake / "healthcare_catalog_dev" / "silver" / "label_history"))
    table.update(
        predicate=f"image_id = '{flipped['image_id']}' AND label_name = '{flipped['category']}'",
        updates={"is_current": "false"},
    )
    assert cli_main(base) == 1
    assert "contradicts their folder" in capsys.readouterr().err


def test_pipeline_gold_uses_and_records_the_site_threshold(site_lake, tmp_path):
    from cxrlake.lakehouse.pipeline import run_pipeline
    from cxrlake.lakehouse.storage import Lakehouse
    from cxrlake.medallion.schemas import PREDICTIONS

    lake, site = site_lake
    stored = local_thresholds.site_threshold(lake, "site_a")
    if stored is None:
        calibration.calibrate_site(
            lake, "site_a", splits=["site_a"], include_development_films=True
        )
        stored = local_thresholds.site_threshold(lake, "site_a")
    # The module's lakehouse was scored before any calibration: the model decided.
    before = Lakehouse(lake).read(PREDICTIONS)
    assert set(before["threshold_source"].to_pylist()) == {"model"}
    assert set(before["decision_threshold"].to_pylist()) == {cxrlake.Model().threshold}
    # A new lakehouse run for the site: its threshold decides and is recorded on every row.
    other = tmp_path / "lake"
    calibration_rows = DeltaTable(
        str(lake / "healthcare_catalog_dev" / "gold" / "site_thresholds")
    ).to_pyarrow_table()
    Lakehouse(other).create_all()
    Lakehouse(other).append(service.site_thresholds_spec(), calibration_rows)
    summary = run_pipeline([site], other, site="site_a", progress=False)
    assert summary.threshold_source == stored.source
    gold = Lakehouse(other).read(PREDICTIONS)
    assert set(gold["threshold_source"].to_pylist()) == {stored.source}
    probs = np.array(gold["prediction_probability"].to_pylist())
    expected = [int(p >= stored.threshold) for p in probs]
    assert gold["predicted_label"].to_pylist() == expected
    # Every film here is a development film of the shipped model: the summary says so.
    assert summary.development_films == {"site_a": [80, 80]}
    assert "training-set figures" in summary.format()


def test_a_site_run_redecides_earlier_predictions_and_says_which_changed(site_lake, tmp_path):
    from cxrlake.lakehouse.pipeline import run_pipeline
    from cxrlake.lakehouse.storage import Lakehouse
    from cxrlake.medallion.schemas import PREDICTIONS

    lake, site = site_lake
    if local_thresholds.site_threshold(lake, "site_a") is None:
        calibration.calibrate_site(
            lake, "site_a", splits=["site_a"], include_development_films=True
        )
    stored = local_thresholds.site_threshold(lake, "site_a")
    copy = tmp_path / "lake"
    shutil.copytree(lake, copy)
    before = Lakehouse(copy).read(PREDICTIONS).to_pylist()
    assert {r["threshold_source"] for r in before} == {"model"}
    flips = sorted(
        r["image_id"]
        for r in before
        if int(r["prediction_probability"] >= stored.threshold) != r["predicted_label"]
    )
    summary = run_pipeline([site], copy, site="site_a", progress=False)
    assert summary.redecided == len(before)
    assert sorted(c["image_id"] for c in summary.label_changes) == flips
    text = summary.format()
    assert f"site site_a: threshold {stored.source}" in text
    assert f"re-decided {len(before)} earlier prediction(s)" in text
    assert f"{len(flips)} label(s) changed" in text
    after = Lakehouse(copy).read(PREDICTIONS).to_pylist()
    assert {r["threshold_source"] for r in after} == {stored.source}
    for r in after:
        assert r["predicted_label"] == int(r["prediction_probability"] >= stored.threshold)
        assert r["is_correct"] == (r["predicted_label"] == r["true_label"])
    # the same run again re-decides nothing; a site without a threshold says why
    assert run_pipeline([site], copy, site="site_a", progress=False).redecided == 0
    none = run_pipeline([site], copy, site="nowhere", progress=False)
    assert "no threshold stored for site nowhere" in none.format()
    assert none.redecided == len(before)  # back at the model's threshold, said so
    assert {r["threshold_source"] for r in Lakehouse(copy).read(PREDICTIONS).to_pylist()} == {
        "model"
    }


def test_shipped_model_records_its_operating_point():
    meta = read_metadata(cxrlake.default_model_path())
    assert float(meta["cxrlake.temperature"]) > 0
    # from 1.2.0: chosen on the held-out later acquisition batches, not on simulated shifts
    assert "sensitivity >= 0.95" in meta["cxrlake.threshold_rule"]
    assert "acquisition batches" in meta["cxrlake.threshold_rule"]


# PySpark's own warning about pandas 3 (as in test_spark.py); mapInArrow does not use pandas.
@pytest.mark.filterwarnings(
    "ignore:PySpark does not yet fully support pandas >= 3.0.0:FutureWarning"
)
def test_spark_gold_uses_the_site_threshold_from_a_table(site_lake, tmp_path):
    import os
    import sys

    from pyspark.sql import SparkSession

    from cxrlake.lakehouse.storage import Lakehouse
    from cxrlake.medallion.schemas import BRONZE, SILVER
    from cxrlake.spark.catalog import SparkCatalog
    from cxrlake.spark.deployment import Deployment
    from cxrlake.spark.transforms import GOLD_INPUT_COLUMNS, to_gold_predictions

    lake, _ = site_lake
    stored = local_thresholds.site_threshold(lake, "site_a")
    if stored is None:
        calibration.calibrate_site(
            lake, "site_a", splits=["site_a"], include_development_films=True
        )
        stored = local_thresholds.site_threshold(lake, "site_a")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master("local[1]")
        .appName("cxrlake-calibration-tests")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.warehouse.dir", str(tmp_path / "warehouse"))
        .getOrCreate()
    )
    try:
        # gold.site_thresholds as a catalog table (parquet here; Delta on Databricks).
        rows = Lakehouse(lake).read(service.site_thresholds_spec())
        spark.sql("CREATE DATABASE IF NOT EXISTS gold")
        spark.createDataFrame(rows).write.saveAsTable("gold.site_thresholds")  # Arrow in
        found = spark_stored.spark_site_threshold(SparkCatalog(spark, "spark_catalog"), "site_a")
        assert found == stored
        absent = SparkCatalog(spark, Deployment("spark_catalog", gold="absent"))
        assert spark_stored.spark_site_threshold(absent, "site_a") is None
        # Score six films on Spark with it: the same labels and provenance as locally.
        silver = Lakehouse(lake).read(SILVER, ["image_id", "label", "dataset_split"]).slice(0, 6)
        bronze = Lakehouse(lake).read(BRONZE, ["image_id", "content_sha256", "content"])
        films = silver.join(bronze, "image_id").select(list(GOLD_INPUT_COLUMNS))
        gold = to_gold_predictions(spark.createDataFrame(films), threshold=found).collect()
    finally:
        spark.stop()
    assert len(gold) == 6
    assert {r["threshold_source"] for r in gold} == {stored.source}
    assert all(
        r["predicted_label"] == int(r["prediction_probability"] >= stored.threshold) for r in gold
    )


def test_report_says_figures_on_development_films_are_no_evaluation(site_lake, tmp_path):
    lake, _ = site_lake
    out = tmp_path / "report.html"
    assert cli_main(["report", "--lakehouse", str(lake), "--out", str(out)]) == 0
    text = out.read_text()
    assert "Not an evaluation" in text and "site_a: training-set figures" in text
