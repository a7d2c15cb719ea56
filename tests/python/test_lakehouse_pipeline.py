"""End-to-end local lakehouse: real images, real Delta tables (read back with delta-rs), real
processes for kill -9 and concurrent runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

import cxrlake
from cxrlake.lakehouse.pipeline import run_pipeline
from cxrlake.lakehouse.storage import LakehouseLock
from cxrlake.medallion import schemas

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("CXRLAKE_SHARED_DATA", REPO.parent / "shared" / "data"))
TRAIN = DATA / "chest_xray" / "train"
FULLRES = DATA / "chest_xray_fullres"

BAD_FILES = {
    "corrupt.jpeg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,  # JPEG magic, then garbage
    "empty.jpeg": b"",
}
NOT_IMAGES = {"notes.txt": b"this is not an image\n"}  # skipped: not an image file name


def _copy(src_dir: Path, dst_dir: Path, names: list[str]) -> None:
    dst_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(src_dir / name, dst_dir / name)


def _images(folder: Path, start: int, count: int) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".jpeg")[start : start + count]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """28 good images (224 px train + 4 full-res + 2 unlabelled), 3 bad files and a FIFO."""
    root = tmp_path_factory.mktemp("source")
    for label in ("NORMAL", "PNEUMONIA"):
        _copy(TRAIN / label, root / "train" / label, _images(TRAIN / label, 0, 11))
        _copy(FULLRES / label, root / "chest_xray_fullres" / label, _images(FULLRES / label, 0, 2))
    _copy(TRAIN / "NORMAL", root / "incoming", _images(TRAIN / "NORMAL", 200, 2))
    for name, content in (BAD_FILES | NOT_IMAGES).items():
        (root / "train" / "NORMAL" / name).write_bytes(content)
    os.mkfifo(root / "train" / "NORMAL" / "fifo.jpeg")
    return root


GOOD = 28


def table(lakehouse: Path, spec: schemas.TableSpec) -> DeltaTable:
    return DeltaTable(spec.path(lakehouse, "dev"))


def rows(lakehouse: Path, spec: schemas.TableSpec) -> list[dict]:
    return table(lakehouse, spec).to_pyarrow_table().to_pylist()


def versions(lakehouse: Path) -> dict[str, int]:
    return {s.qualified_name: table(lakehouse, s).version() for s in schemas.TABLES}


def snapshot(lakehouse: Path) -> dict[str, list[tuple]]:
    """Every table's rows without run-dependent columns (timestamps, batch ids), sorted."""
    out = {}
    for spec in schemas.TABLES:
        t = table(lakehouse, spec).to_pyarrow_table()
        keep = [
            f.name
            for f in t.schema
            if not pa.types.is_timestamp(f.type)
            and not pa.types.is_date(f.type)
            and not f.name.endswith("batch_id")
        ]
        out[spec.qualified_name] = sorted(
            tuple(json.dumps(v, sort_keys=True, default=repr) for v in r.values())
            for r in t.select(keep).to_pylist()
        )
    return out


def assert_same_rows(lakehouse: Path, expected: Path) -> None:
    """Table by table, the rows of `lakehouse` equal those of `expected` (diff on failure)."""
    got, want = snapshot(lakehouse), snapshot(expected)
    for name in want:
        missing = sorted(set(want[name]) - set(got[name]))
        extra = sorted(set(got[name]) - set(want[name]))
        assert not missing and not extra, f"{name}: missing {missing[:3]}, extra {extra[:3]}"
        assert got[name] == want[name], f"{name}: duplicate rows"


@pytest.fixture(scope="module")
def clean_run(source, tmp_path_factory):
    """A lakehouse after one uninterrupted run, and that run's summary."""
    lakehouse = tmp_path_factory.mktemp("clean")
    summary = run_pipeline([source], lakehouse, progress=False)
    return lakehouse, summary


def test_tables_have_exact_schemas_and_change_data_feed(clean_run):
    lakehouse, _ = clean_run
    for spec in schemas.TABLES:
        dt = table(lakehouse, spec)
        assert pa.schema(dt.schema().to_arrow()).names == spec.arrow_schema.names
        got = {f.name: f.type for f in pa.schema(dt.schema().to_arrow())}
        want = {f.name: f.type for f in spec.arrow_schema}
        # delta-rs may hand strings back as string_view / large_string: compare Delta types
        for name, typ in want.items():
            g = got[name]
            if pa.types.is_string(typ):
                assert pa.types.is_string(g) or pa.types.is_large_string(g) or g == pa.string_view()
            elif pa.types.is_list(typ):
                assert pa.types.is_float64(g.value_type), name
            else:
                assert g == typ, (spec.qualified_name, name, g, typ)
        assert dt.metadata().configuration["delta.enableChangeDataFeed"] == "true"
        assert dt.metadata().name == spec.name
    assert os.path.isdir(lakehouse / "healthcare_catalog_dev" / "gold" / "pneumonia_predictions")
    # the change feed is readable and holds one insert per silver row
    feed = pa.RecordBatchReader.from_stream(table(lakehouse, schemas.SILVER).load_cdf()).read_all()
    changes = feed.column("_change_type").to_pylist()
    assert changes.count("insert") == table(lakehouse, schemas.SILVER).count() == GOOD


def test_clean_run_contents(clean_run, source):
    lakehouse, summary = clean_run
    bronze = rows(lakehouse, schemas.BRONZE)
    silver = rows(lakehouse, schemas.SILVER)
    features = rows(lakehouse, schemas.FEATURES)
    quarantine = rows(lakehouse, schemas.QUARANTINE)
    preds = rows(lakehouse, schemas.PREDICTIONS)
    # bronze: every regular file once, bytes and hash of the real file
    assert len(bronze) == GOOD + len(BAD_FILES)
    for r in bronze:
        content = Path(r["file_path"]).read_bytes()
        assert r["content"] == content and r["file_size_bytes"] == len(content)
        assert len(r["content_sha256"]) == 64
    by_name = {r["filename"]: r for r in bronze}
    assert by_name["IM-0115-0001.jpeg"]["category"] == "NORMAL"
    assert {r["dataset_split"] for r in bronze} == {"train", "chest_xray_fullres", "incoming"}
    assert all(r["category"] is None for r in bronze if r["dataset_split"] == "incoming")
    # quarantine: each bad file with its reason, the FIFO at listing without hanging
    reasons = {r["filename"]: (r["stage"], r["reason"]) for r in quarantine}
    assert set(reasons) == {*BAD_FILES, "fifo.jpeg"}
    assert reasons["fifo.jpeg"] == ("listing", "not a regular file (fifo)")
    for name in BAD_FILES:
        stage, reason = reasons[name]
        assert stage == "silver" and reason, name
    assert "empty" in reasons["empty.jpeg"][1]
    # silver: the good images, with dimensions from the real files
    assert len(silver) == GOOD and len(features) == GOOD
    assert {r["image_id"] for r in silver} == {r["image_id"] for r in features}
    assert not {r["image_id"] for r in silver} & {r["image_id"] for r in quarantine}
    for r in silver:
        assert 0.0 <= r["quality_score"] <= 1.0
        assert r["label"] == (
            None if r["label_name"] is None else ["NORMAL", "PNEUMONIA"].index(r["label_name"])
        )
        if r["dataset_split"] in ("train", "incoming"):
            assert (r["image_width"], r["image_height"]) == (224, 224)
        else:
            assert min(r["image_width"], r["image_height"]) > 224
    for r in features:
        assert r["feature_vector"] and 0 <= r["mean_pixel_value"] <= 255
    # gold: every good image scored once, consistent with cxrlake.predict on the file
    assert len(preds) == GOOD and len({r["prediction_id"] for r in preds}) == GOOD
    paths = {r["image_id"]: r["file_path"] for r in silver}
    direct = cxrlake.predict([paths[r["image_id"]] for r in preds]).column("probability")
    for r, p in zip(preds, direct.to_pylist(), strict=True):
        assert r["prediction_probability"] == pytest.approx(p, abs=1e-6)
        assert r["confidence_score"] == pytest.approx(max(p, 1 - p))
        assert r["is_correct"] == (
            None if r["true_label"] is None else r["predicted_label"] == r["true_label"]
        )
        assert r["prediction_date"] == r["predicted_at"].date()
    # performance: one row per labelled split
    perf = rows(lakehouse, schemas.PERFORMANCE)
    assert sorted(r["dataset_split"] for r in perf) == ["chest_xray_fullres", "train"]
    for r in perf:
        cm = json.loads(r["confusion_matrix"])
        assert sum(map(sum, cm["matrix"])) == r["total_samples"]
    assert {r["dataset_split"]: r["total_samples"] for r in perf} == {
        "train": 22,
        "chest_xray_fullres": 4,
    }
    # summary
    assert summary.new_rows["bronze.kaggle_xray_metadata"] == GOOD + len(BAD_FILES)
    assert summary.total_rows["gold.pneumonia_predictions"] == GOOD
    assert len(summary.quarantined) == len(BAD_FILES) + 1
    assert "quarantined this run: 3" in summary.format()
    # notes.txt: skipped by the filter `cxrlake predict` uses, counted, neither stored nor held
    assert summary.files_not_images == len(NOT_IMAGES)
    assert not {*NOT_IMAGES} & {r["filename"] for r in bronze + quarantine}
    assert "skipped 1 file that is not an image" in summary.format()
    assert "notes.txt" in summary.format()
    assert f"{GOOD + len(BAD_FILES) + 1} image files, " in summary.format()  # + the FIFO


def test_rerun_writes_nothing(clean_run, source):
    lakehouse, _ = clean_run
    before_versions, before = versions(lakehouse), snapshot(lakehouse)
    summary = run_pipeline([source], lakehouse, progress=False)
    assert versions(lakehouse) == before_versions  # not a single commit
    assert snapshot(lakehouse) == before
    assert set(summary.new_rows.values()) == {0}
    assert summary.files_skipped_unchanged == GOOD + len(BAD_FILES)


def test_ten_new_images_add_exactly_ten_rows(source, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(source, src, ignore=shutil.ignore_patterns("fifo.jpeg"))
    lakehouse = tmp_path / "lh"
    run_pipeline([src], lakehouse, progress=False)
    counts = {s.qualified_name: table(lakehouse, s).count() for s in schemas.TABLES}
    _copy(TRAIN / "PNEUMONIA", src / "train" / "PNEUMONIA", _images(TRAIN / "PNEUMONIA", 100, 10))
    summary = run_pipeline([src], lakehouse, progress=False)
    after = {s.qualified_name: table(lakehouse, s).count() for s in schemas.TABLES}
    for name in (
        "bronze.kaggle_xray_metadata",
        "silver.xray_metadata",
        "silver.image_features",
        "gold.pneumonia_predictions",
    ):
        assert after[name] == counts[name] + 10, name
        assert summary.new_rows[name] == 10
    assert after["silver.quarantine"] == counts["silver.quarantine"]
    # the train split's prediction set changed: one new evaluation row, for train only
    perf = rows(lakehouse, schemas.PERFORMANCE)
    assert sorted(r["dataset_split"] for r in perf) == ["chest_xray_fullres", "train", "train"]
    assert max(r["total_samples"] for r in perf if r["dataset_split"] == "train") == 32


def test_changed_file_is_reingested_and_replaces_silver_and_gold_rows(source, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(source, src, ignore=shutil.ignore_patterns("fifo.jpeg"))
    lakehouse = tmp_path / "lh"
    run_pipeline([src], lakehouse, progress=False)
    target = src / "train" / "NORMAL" / "empty.jpeg"  # was quarantined; now a real image
    shutil.copyfile(TRAIN / "NORMAL" / _images(TRAIN / "NORMAL", 300, 1)[0], target)
    run_pipeline([src], lakehouse, progress=False)
    bronze = [r for r in rows(lakehouse, schemas.BRONZE) if r["filename"] == "empty.jpeg"]
    assert len(bronze) == 2  # append-only: both versions kept
    assert "empty.jpeg" not in {r["filename"] for r in rows(lakehouse, schemas.QUARANTINE)}
    silver = [r for r in rows(lakehouse, schemas.SILVER) if r["filename"] == "empty.jpeg"]
    assert (
        len(silver) == 1
        and silver[0]["content_sha256"]
        == max(bronze, key=lambda r: r["ingested_at"])["content_sha256"]
    )
    assert len(rows(lakehouse, schemas.PREDICTIONS)) == GOOD + 1


def test_sample_per_label_limits_ingestion(source, tmp_path):
    lakehouse = tmp_path / "lh"
    summary = run_pipeline([source], lakehouse, sample_per_label=3, progress=False)
    bronze = rows(lakehouse, schemas.BRONZE)
    groups: dict[tuple, int] = {}
    for r in bronze:
        groups[(r["dataset_split"], r["category"])] = (
            groups.get((r["dataset_split"], r["category"]), 0) + 1
        )
    assert groups == {
        ("train", "NORMAL"): 3,
        ("train", "PNEUMONIA"): 3,
        ("chest_xray_fullres", "NORMAL"): 2,
        ("chest_xray_fullres", "PNEUMONIA"): 2,
        ("incoming", None): 2,
    }
    assert summary.new_rows["gold.pneumonia_predictions"] == len(
        rows(lakehouse, schemas.PREDICTIONS)
    )
    # found and sampled, both said: 28 good + 2 bad images + the FIFO found; the 12 sampled
    # (the bad images compete in train/NORMAL's group) + the FIFO held at listing
    assert (summary.files_found, summary.files_listed) == (GOOD + len(BAD_FILES) + 1, 13)
    assert "31 image files, 13 sampled (3 per label)" in summary.format()


def test_a_single_source_folder_may_be_given_as_a_string(tmp_path):
    src = tmp_path / "src" / "NORMAL"
    _copy(TRAIN / "NORMAL", src, _images(TRAIN / "NORMAL", 0, 1))
    summary = run_pipeline(str(tmp_path / "src"), tmp_path / "lh", progress=False)
    assert summary.total_rows["gold.pneumonia_predictions"] == 1
    summary = run_pipeline(tmp_path / "src", tmp_path / "lh", progress=False)  # a Path too
    assert summary.files_skipped_unchanged == 1


def test_a_second_run_says_it_waits_for_the_lock(tmp_path):
    waiter = (
        "import sys\nfrom cxrlake.lakehouse.storage import LakehouseLock\n"
        "with LakehouseLock(sys.argv[1]):\n    print('got it')\n"
    )
    with LakehouseLock(tmp_path):
        proc = subprocess.Popen(
            [sys.executable, "-c", waiter, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = proc.stderr.readline()  # written before it blocks, while we hold the lock
        assert proc.poll() is None, proc.stderr.read()
    out, err = proc.communicate(timeout=60)
    assert f"waiting for the lakehouse lock held by pid {os.getpid()}" in first
    assert out == "got it\n" and proc.returncode == 0, err


def test_a_lakehouse_of_an_earlier_version_gains_the_new_columns(tmp_path):
    """gold.pneumonia_predictions written without ``heatmap`` (an earlier version's schema):
    the run adds the column; the run then completes."""
    lakehouse = tmp_path / "lh"
    src = tmp_path / "src" / "NORMAL"
    _copy(TRAIN / "NORMAL", src, _images(TRAIN / "NORMAL", 0, 2))
    old = schemas.PREDICTIONS.arrow_schema
    old = old.remove(old.get_field_index("heatmap"))
    path = schemas.PREDICTIONS.path(lakehouse, "dev")
    os.makedirs(path)
    DeltaTable.create(path, old, name=schemas.PREDICTIONS.name)
    summary = run_pipeline(tmp_path / "src", lakehouse, progress=False)
    got = table(lakehouse, schemas.PREDICTIONS).to_pyarrow_table()
    assert "heatmap" in got.column_names and got.num_rows == 2
    assert summary.total_rows["gold.pneumonia_predictions"] == 2


RUNNER = """
import sys
from cxrlake.lakehouse.pipeline import run_pipeline
size = int(sys.argv[3])
run_pipeline([sys.argv[1]], sys.argv[2], batch_size=size, commit_rows=size, progress=False)
"""


def _start(source: Path, lakehouse: Path, batch_size: int) -> subprocess.Popen:
    env = dict(os.environ, CXRLAKE_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(source), str(lakehouse), str(batch_size)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _log_versions(lakehouse: Path, spec: schemas.TableSpec) -> int:
    log = Path(spec.path(lakehouse, "dev")) / "_delta_log"
    return len(list(log.glob("*.json"))) if log.is_dir() else 0


@pytest.mark.parametrize(
    ("stage", "spec", "commits"),
    [
        ("bronze", schemas.BRONZE, 4),
        ("silver", schemas.SILVER, 3),
        ("gold", schemas.PREDICTIONS, 3),
    ],
)
def test_kill_9_mid_run_then_rerun_equals_clean_run(
    clean_run, source, tmp_path, stage, spec, commits
):
    clean_lakehouse, _ = clean_run
    lakehouse = tmp_path / "lh"
    proc = _start(source, lakehouse, batch_size=2)
    # kill as soon as the stage has made `commits` commits (table creation is the first)
    while _log_versions(lakehouse, spec) < commits and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    partial = {s.qualified_name: table(lakehouse, s).count() for s in schemas.TABLES}
    assert partial["gold.pneumonia_predictions"] < GOOD  # it really was mid-run
    run_pipeline([source], lakehouse, progress=False)
    assert_same_rows(lakehouse, clean_lakehouse)


def test_two_concurrent_runs_equal_one_run(clean_run, source, tmp_path):
    clean_lakehouse, _ = clean_run
    lakehouse = tmp_path / "lh"
    procs = [_start(source, lakehouse, batch_size=4) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()
    assert_same_rows(lakehouse, clean_lakehouse)
    bronze_keys = [(r["image_id"], r["content_sha256"]) for r in rows(lakehouse, schemas.BRONZE)]
    assert len(bronze_keys) == len(set(bronze_keys))


def test_commits_hold_at_most_commit_rows_images(source, tmp_path):
    """Bounded memory: every Delta commit of image rows holds at most `commit_rows` images."""
    lakehouse = tmp_path / "lh"
    run_pipeline([source], lakehouse, batch_size=2, commit_rows=4, progress=False)
    metric = {"WRITE": "num_added_rows", "MERGE": "num_source_rows"}
    for spec in (schemas.BRONZE, schemas.SILVER, schemas.FEATURES, schemas.PREDICTIONS):
        sizes = [
            h["operationMetrics"][metric[h["operation"]]]
            for h in table(lakehouse, spec).history()
            if h["operation"] in metric
        ]
        assert sum(sizes) == table(lakehouse, spec).count(), spec.qualified_name
        assert max(sizes) == 4 and len(sizes) >= GOOD // 4, (spec.qualified_name, sizes)


@pytest.mark.parametrize(
    "corrupt",
    [BAD_FILES["corrupt.jpeg"], b"\xff\xd8\xff garbage", b"\x89PNG\r\n\x1a\n garbage"],
    ids=["jpeg-bad-body", "jpeg-bad-header", "png-bad-header"],
)
def test_a_corrupt_image_quarantines_only_itself_not_its_batch_neighbours(corrupt):
    """The quarantine rule is per row: good images after a corrupt one in the same Arrow batch
    still reach silver (regression: a decoder left in an error state failed every later row)."""
    from cxrlake.medallion import transforms

    names = _images(TRAIN / "NORMAL", 0, 6)
    paths = [str(TRAIN / "NORMAL" / n) for n in names[:3]]
    paths += ["/x/train/NORMAL/corrupt.jpeg"]
    paths += [str(TRAIN / "NORMAL" / n) for n in names[3:]]
    contents = [Path(p).read_bytes() for p in paths[:3]] + [corrupt]
    contents += [Path(p).read_bytes() for p in paths[4:]]
    binary_file = pa.RecordBatch.from_pydict(
        {
            "path": paths,
            "modificationTime": pa.array([None] * 7, pa.timestamp("us", tz="UTC")),
            "length": pa.array([len(c) for c in contents], pa.int64()),
            "content": pa.array(contents, pa.binary()),
        }
    )
    out = transforms.silver_batch(transforms.bronze_batch(binary_file, "b"), threads=1)
    assert out.quarantine.column("filename").to_pylist() == ["corrupt.jpeg"]
    assert out.metadata.column("filename").to_pylist() == names


# ---------------------------------------------------------------- hardening


def _small_source(root: Path, normal: int = 3, pneumonia: int = 2) -> Path:
    _copy(TRAIN / "NORMAL", root / "train" / "NORMAL", _images(TRAIN / "NORMAL", 0, normal))
    _copy(
        TRAIN / "PNEUMONIA",
        root / "train" / "PNEUMONIA",
        _images(TRAIN / "PNEUMONIA", 0, pneumonia),
    )
    return root


def _ids_of(lakehouse: Path, spec: schemas.TableSpec) -> set[str]:
    return {r["image_id"] for r in rows(lakehouse, spec)}


def test_a_file_name_that_is_not_utf8_is_quarantined_and_the_rest_ingested(tmp_path):
    src = _small_source(tmp_path / "src")
    bad = os.fsencode(src / "train" / "NORMAL") + b"/img3\xff.jpeg"
    with open(bad, "wb") as f:
        f.write((TRAIN / "NORMAL" / _images(TRAIN / "NORMAL", 0, 1)[0]).read_bytes())
    summary = run_pipeline([src], tmp_path / "lh", progress=False)
    assert summary.total_rows["silver.xray_metadata"] == 5
    (held,) = rows(tmp_path / "lh", schemas.QUARANTINE)
    assert (held["stage"], held["reason"]) == ("listing", "file name is not valid UTF-8")
    assert held["file_path"].endswith("img3\\udcff.jpeg")
    assert "file name is not valid UTF-8" in summary.format()


def test_identity_collisions_are_quarantined_naming_both_files(tmp_path):
    src = tmp_path / "src"
    a, b = _images(TRAIN / "NORMAL", 0, 2)
    for split, name in (("train-1", a), ("train_1", b)):
        _copy(TRAIN / "NORMAL", src / split / "NORMAL", [name])
        (src / split / "NORMAL" / name).rename(src / split / "NORMAL" / "img2.jpeg")
    _copy(TRAIN / "PNEUMONIA", src / "train" / "PNEUMONIA", _images(TRAIN / "PNEUMONIA", 0, 1))
    lakehouse = tmp_path / "lh"
    summary = run_pipeline([src], lakehouse, progress=False)
    (held,) = rows(lakehouse, schemas.QUARANTINE)
    assert summary.collisions == 1
    assert held["stage"] == "listing" and held["reason"].startswith("identity collision: ")
    twins = sorted(str(p) for p in src.rglob(held["filename"]))
    assert len(twins) == 2 and all(t in held["reason"] for t in twins), held["reason"]
    assert "identity collisions: 1" in summary.format()
    # the colliding files are neither read nor "unchanged since last run" on a first run
    assert summary.files_skipped_unchanged == 0
    assert "0 unchanged since last run" in summary.format()
    assert len(rows(lakehouse, schemas.SILVER)) == 1
    assert held["image_id"] not in _ids_of(lakehouse, schemas.BRONZE)
    # removing one file of the pair ends the collision: the other is ingested, the hold released
    (src / "train_1" / "NORMAL" / "img2.jpeg").unlink()
    run_pipeline([src], lakehouse, progress=False)
    assert rows(lakehouse, schemas.QUARANTINE) == []
    assert "img2.jpeg" in {r["filename"] for r in rows(lakehouse, schemas.SILVER)}


def _site_pair(root: Path, name: str = "img1.jpeg") -> tuple[Path, Path]:
    """``root/site1/train/NORMAL/<name>`` and ``root/site2/...``: other bytes, one name."""
    a, b = _images(TRAIN / "NORMAL", 0, 2)
    out = []
    for site, image in (("site1", a), ("site2", b)):
        (root / site / "train" / "NORMAL").mkdir(parents=True)
        shutil.copyfile(TRAIN / "NORMAL" / image, root / site / "train" / "NORMAL" / name)
        out.append(root / site / "train" / "NORMAL" / name)
    return out[0], out[1]


def test_two_sites_with_the_same_file_names_are_two_images_both_scored(tmp_path):
    hospital = tmp_path / "hospital"
    _site_pair(hospital)
    summary = run_pipeline([hospital], tmp_path / "lh", progress=False)
    assert summary.collisions == 0 and rows(tmp_path / "lh", schemas.QUARANTINE) == []
    silver = rows(tmp_path / "lh", schemas.SILVER)
    assert [r["filename"] for r in silver] == ["img1.jpeg", "img1.jpeg"]
    assert len({r["image_id"] for r in silver}) == 2
    assert len(rows(tmp_path / "lh", schemas.PREDICTIONS)) == 2
    assert summary.files_skipped_unchanged == 0 and "0 unchanged since last run" in summary.format()
    # two sources holding the same relative name: two images as well
    one, two = tmp_path / "a" / "st-mary", tmp_path / "b" / "st-john"
    for source, image in ((one, 2), (two, 3)):
        _copy(TRAIN / "NORMAL", source / "train" / "NORMAL", _images(TRAIN / "NORMAL", image, 1))
        (source / "train" / "NORMAL" / _images(TRAIN / "NORMAL", image, 1)[0]).rename(
            source / "train" / "NORMAL" / "same.jpeg"
        )
    summary = run_pipeline([one, two], tmp_path / "lh2", progress=False)
    assert summary.collisions == 0
    assert len(rows(tmp_path / "lh2", schemas.PREDICTIONS)) == 2
    # a re-run changes nothing
    again = run_pipeline([one, two], tmp_path / "lh2", progress=False)
    assert set(again.new_rows.values()) <= {0} and again.files_skipped_unchanged == 2


def test_a_lakehouse_of_rule_1_ids_keeps_them_and_new_sources_follow_rule_2(tmp_path, monkeypatch):
    from cxrlake.lakehouse import pipeline
    from cxrlake.medallion import identity

    src = _small_source(tmp_path / "src")
    lakehouse = tmp_path / "lh"
    # a lakehouse written before sites entered the id: every source identified by rule 1
    with monkeypatch.context() as m:
        m.setattr(pipeline.identity, "identity_roots", lambda sources, known: [])
        run_pipeline([src], lakehouse, progress=False)
    before = _ids_of(lakehouse, schemas.BRONZE)
    assert before == {identity.identify(str(p)).image_id for p in src.rglob("*.jpeg")}
    again = run_pipeline([src], lakehouse, progress=False)
    assert set(again.new_rows.values()) <= {0} and _ids_of(lakehouse, schemas.BRONZE) == before
    hospital = tmp_path / "hospital"
    first, _ = _site_pair(hospital)
    run_pipeline([src, hospital], lakehouse, progress=False)
    added = _ids_of(lakehouse, schemas.SILVER) - before
    assert len(added) == 2
    assert identity.identify(str(first), str(hospital)).image_id in added
    assert identity.identify(str(first)).image_id not in added


def test_a_good_file_turned_corrupt_leaves_silver_and_gold_and_the_evaluation(tmp_path):
    src = _small_source(tmp_path / "src")
    lakehouse = tmp_path / "lh"
    run_pipeline([src], lakehouse, progress=False)
    victim = src / "train" / "NORMAL" / _images(TRAIN / "NORMAL", 0, 1)[0]
    victim.write_bytes(victim.read_bytes()[:400])
    summary = run_pipeline([src], lakehouse, progress=False)
    (bad_id,) = {r["image_id"] for r in rows(lakehouse, schemas.QUARANTINE)}
    for spec in (schemas.SILVER, schemas.FEATURES, schemas.PREDICTIONS):
        assert bad_id not in _ids_of(lakehouse, spec), spec.qualified_name
        assert summary.deleted_rows[spec.qualified_name] == 1
    latest = max(rows(lakehouse, schemas.PERFORMANCE), key=lambda r: r["evaluated_at"])
    assert latest["total_samples"] == 4


def test_touched_unchanged_files_are_read_once_then_skipped(tmp_path):
    src = _small_source(tmp_path / "src")
    lakehouse = tmp_path / "lh"
    run_pipeline([src], lakehouse, progress=False)
    before = snapshot(lakehouse)
    for p in src.rglob("*.jpeg"):
        os.utime(p, (1_900_000_000, 1_900_000_000))
    touched = run_pipeline([src], lakehouse, progress=False)
    assert touched.files_skipped_unchanged == 0
    assert touched.updated_rows["bronze.kaggle_xray_metadata"] == 5
    assert set(touched.new_rows.values()) == {0}
    assert snapshot(lakehouse) == before
    again = run_pipeline([src], lakehouse, progress=False)
    assert again.files_skipped_unchanged == 5


def test_summary_escapes_control_characters_of_file_names(tmp_path):
    src = _small_source(tmp_path / "src", 1, 1)
    forged = "x.jpeg\n    [silver] forged.jpeg: all good\x1b[2J"
    (src / "train" / "NORMAL" / forged).write_bytes(b"not an image")
    summary = run_pipeline([src], tmp_path / "lh", progress=False)
    text = summary.format()
    assert not any(line.lstrip().startswith("[silver] forged") for line in text.splitlines())
    assert "\x1b" not in text and "x.jpeg\\n    [silver] forged.jpeg" in text
    assert "time" not in summary.stage_seconds and set(summary.stage_seconds) == {
        "listing",
        "bronze",
        "silver+gold",
        "performance",
        "drift",
    }


KILL_RUNNER = """
import sys
from cxrlake.lakehouse.pipeline import run_pipeline
run_pipeline([sys.argv[1]], sys.argv[2], batch_size=64, progress=False)
"""


def test_kill_9_at_every_commit_boundary_then_rerun_equals_a_clean_run(tmp_path):
    """A run that flips one file good -> corrupt and one corrupt -> good and adds one, killed
    right after each of its commits (fault-injection point in storage); the next run must end
    with exactly the rows of an uninterrupted run."""
    from cxrlake.lakehouse import storage

    src = _small_source(tmp_path / "src")
    broken = src / "train" / "PNEUMONIA" / "broken.jpeg"
    broken.write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    base = tmp_path / "base"
    run_pipeline([src], base, progress=False)
    good = src / "train" / "NORMAL" / _images(TRAIN / "NORMAL", 0, 1)[0]
    good.write_bytes(good.read_bytes()[:300])
    shutil.copyfile(TRAIN / "PNEUMONIA" / _images(TRAIN / "PNEUMONIA", 5, 1)[0], broken)
    _copy(TRAIN / "NORMAL", src / "train" / "NORMAL", _images(TRAIN / "NORMAL", 9, 1))
    clean = tmp_path / "clean"
    shutil.copytree(base, clean)
    start = storage.commits_made()
    run_pipeline([src], clean, progress=False)
    commits = storage.commits_made() - start
    assert commits >= 8  # bronze, silver/features/predictions/quarantine writes and deletes
    for k in range(1, commits + 1):
        lakehouse = tmp_path / f"killed-{k}"
        shutil.copytree(base, lakehouse)
        env = dict(os.environ, CXRLAKE_NUM_THREADS="1", CXRLAKE_FAULT_KILL_AFTER_COMMIT=str(k))
        proc = subprocess.run(
            [sys.executable, "-c", KILL_RUNNER, str(src), str(lakehouse)],
            env=env,
            capture_output=True,
        )
        assert proc.returncode == -signal.SIGKILL, (k, proc.stderr.decode()[-2000:])
        run_pipeline([src], lakehouse, progress=False)
        assert_same_rows(lakehouse, clean)
        shutil.rmtree(lakehouse)


def test_analysis_ahead_decodes_each_image_once_and_changes_no_row(source, tmp_path, monkeypatch):
    """New bronze rows are analysed while bronze runs; silver+gold takes the rows the to-do rule
    selects. Each image goes through the core once, as many as without the look-ahead, and every
    table holds the rows of a run without it (an identity collision in the sources too)."""
    from cxrlake.lakehouse import pipeline
    from cxrlake.medallion import transforms

    other = tmp_path / "other"
    _copy(TRAIN / "NORMAL", other / "train" / "NORMAL", _images(TRAIN / "NORMAL", 20, 3))
    # one name in `train-1` and `train_1` (one split after normalising), other bytes: a collision
    for split, image in (("train-1", 30), ("train_1", 31)):
        (other / split / "NORMAL").mkdir(parents=True)
        shutil.copyfile(
            TRAIN / "NORMAL" / _images(TRAIN / "NORMAL", image, 1)[0],
            other / split / "NORMAL" / "twin.jpeg",
        )
    analysed: list[int] = []
    real = transforms.analyze_batch

    def counting(batch, *args, **kwargs):
        analysed.append(batch.num_rows)
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(transforms, "analyze_batch", counting)
    summary = run_pipeline([source, other], tmp_path / "ahead", batch_size=4, progress=False)
    assert summary.collisions >= 1
    with_ahead = sum(analysed)
    analysed.clear()
    monkeypatch.setattr(pipeline, "AHEAD_BYTES", 0)  # everything analysed in silver+gold
    run_pipeline([source, other], tmp_path / "plain", batch_size=4, progress=False)
    assert with_ahead == sum(analysed) == table(tmp_path / "plain", schemas.BRONZE).count()
    assert_same_rows(tmp_path / "ahead", tmp_path / "plain")


def test_a_result_analysed_ahead_gives_only_the_selected_rows_each_once():
    """`only_keys` keeps the rows of the selected (image_id, content_sha256) keys, each once, in
    every part (silver, features, predictions, quarantine)."""
    from cxrlake.lakehouse.analysis_feed import only_keys
    from cxrlake.medallion import transforms

    paths = [str(TRAIN / "NORMAL" / n) for n in _images(TRAIN / "NORMAL", 0, 3)]
    contents = [Path(p).read_bytes() for p in paths] + [b"\xff\xd8\xff broken"]
    paths.append("/x/train/NORMAL/broken.jpeg")
    ts = pa.array([0] * 4, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    files = pa.table(
        {
            "path": pa.array(paths),
            "modificationTime": ts,
            "length": pa.array([len(c) for c in contents], pa.int64()),
            "content": pa.array(contents, pa.binary()),
        }
    )
    bronze = pa.Table.from_batches([transforms.bronze_batch(files, "b1")])
    twice = pa.concat_tables([bronze, bronze.slice(1, 1)])  # one key twice
    out = transforms.analyze_batch(twice.select(list(transforms.BRONZE_ANALYZE_COLUMNS)))
    keys = pa.array(
        [f"{r['image_id']}/{r['content_sha256']}" for r in bronze.to_pylist()], pa.string()
    )
    chosen = only_keys(out, keys.take([1, 3]))
    assert chosen.metadata.num_rows == 1 and chosen.features.num_rows == 1
    assert chosen.predictions.num_rows == 1 and chosen.quarantine.num_rows == 1
    assert chosen.metadata.column("image_id")[0] == bronze.column("image_id")[1]
    everything = only_keys(out, keys)
    assert everything.metadata.num_rows == 3 and everything.quarantine.num_rows == 1
