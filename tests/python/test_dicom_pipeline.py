"""DICOM files through the local pipeline, beside real JPEGs: bronze keeps each file's header as
DICOM JSON (no pixel data), silver only its de-identified form, BurnedInAnnotation = YES is
quarantined, extension-less DICOM files are taken and other extension-less files skipped; no
name, ID, date or UID of the files survives in silver, gold, the report or the run's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable
from dicom_support import (
    DICOM_SOURCES,
    TEST_KEY,
    dicom_json,
    find,
    identifying_strings,
    leaks,
    write_sources,
)

import cxrlake
from cxrlake.medallion import schemas

BURNED_IN = "BurnedInAnnotation is YES: the pixels may show identifying text"


def _jpegs(shared_data: Path) -> dict[str, list[Path]]:
    train = shared_data / "chest_xray" / "train"
    return {
        label: sorted(p for p in (train / label).iterdir() if p.suffix == ".jpeg")[:2]
        for label in ("NORMAL", "PNEUMONIA")
    }


def _cli(*args: str, key: str | None, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CXRLAKE_DEID_KEY"}
    if key is not None:
        env["CXRLAKE_DEID_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "cxrlake.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _table(lakehouse: Path, spec: schemas.TableSpec) -> pa.Table:
    return DeltaTable(spec.path(lakehouse, "dev")).to_pyarrow_table()


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory, shared_data):
    """One CLI pipeline run over JPEGs and DICOM files (key set), then `cxrlake report`."""
    root = tmp_path_factory.mktemp("dicom_pipeline")
    src = root / "landing"
    paths = write_sources(src, _jpegs(shared_data))
    lakehouse = root / "lakehouse"
    run = _cli(
        "pipeline",
        "run",
        "--source",
        str(src),
        "--lakehouse",
        str(lakehouse),
        "--no-progress",
        key=TEST_KEY,
        cwd=root,
    )
    assert run.returncode == 0, run.stderr
    report = _cli(
        "report",
        "--lakehouse",
        str(lakehouse),
        "--out",
        str(root / "report.html"),
        key=None,
        cwd=root,
    )
    assert report.returncode == 0, report.stderr
    return {
        "paths": paths,
        "lakehouse": lakehouse,
        "output": run.stdout + run.stderr + report.stdout + report.stderr,
        "report": (root / "report.html").read_text(),
    }


def test_bronze_keeps_the_header_as_dicom_json_without_pixel_data(dicom_run):
    bronze = _table(dicom_run["lakehouse"], schemas.BRONZE)
    by_name = dict(
        zip(bronze["filename"].to_pylist(), bronze["dicom_metadata"].to_pylist(), strict=True)
    )
    assert all(by_name[n] is None for n in by_name if n.endswith(".jpeg"))
    for name, role in (("CT_small.dcm", "ct"), ("MR_small.dcm", "mr"), ("IM000001", "ct")):
        ours = json.loads(by_name[name])
        reference = dicom_json(dicom_run["paths"][role])
        assert "7FE00010" not in ours and "7FE00010" not in reference
        for tag, element in reference.items():
            if "InlineBinary" in element and len(element["InlineBinary"]) > 344:
                assert tag not in ours  # bulk data over 256 bytes is left out, never inlined
                continue
            if element.get("vr") == "SQ" and not element.get("Value"):
                element = {"vr": "SQ"}  # PS3.18 F.2.2: an empty value has no Value field
            got = ours.get(tag)
            if element.get("vr") == "FL":  # pydicom prints float32 widened to float64
                assert got["Value"] == pytest.approx(element["Value"], rel=1e-6), tag
            else:
                assert got == element, (name, tag)
    assert "README" not in by_name  # extension-less but not DICOM: skipped


def test_silver_holds_only_deidentified_metadata_and_quarantines_burned_in(dicom_run):
    lakehouse = dicom_run["lakehouse"]
    silver = _table(lakehouse, schemas.SILVER)
    quarantine = _table(lakehouse, schemas.QUARANTINE)
    gold = _table(lakehouse, schemas.PREDICTIONS)
    names = set(silver["filename"].to_pylist())
    assert {"CT_small.dcm", "MR_small.dcm", "RG1_UNCR.dcm", "IM000001"} <= names
    assert "burned_in.dcm" not in names
    (reason,) = quarantine.filter(pc.equal(quarantine["filename"], "burned_in.dcm"))[
        "reason"
    ].to_pylist()
    assert reason == BURNED_IN
    assert quarantine.num_rows == 1
    assert gold.num_rows == silver.num_rows == 8
    for row in silver.to_pylist():
        if row["filename"].endswith(".jpeg"):
            assert row["dicom_metadata_deid"] is None
            continue
        meta = json.loads(row["dicom_metadata_deid"])
        assert meta["00120062"]["Value"] == ["YES"]  # PatientIdentityRemoved
        assert not any(int(tag[:4], 16) % 2 for tag in meta)  # no private attributes
    chest = silver.filter(pc.equal(silver["filename"], "RG1_UNCR.dcm")).to_pylist()[0]
    assert (chest["image_width"], chest["image_height"], chest["label_name"]) == (
        1841,
        1955,
        "PNEUMONIA",
    )


def test_no_name_id_date_or_uid_survives_past_bronze(dicom_run):
    secrets: set[str] = set()
    for name in DICOM_SOURCES:
        secrets |= identifying_strings(dicom_json(find(name)))
    assert len(secrets) > 20, "the check needs identifying strings to look for"
    lakehouse = dicom_run["lakehouse"]
    bronze = json.dumps(
        _table(lakehouse, schemas.BRONZE).drop_columns(["content"]).to_pylist(), default=str
    )
    assert leaks(bronze, secrets), "bronze keeps the original header (the check can fail)"
    for spec in schemas.TABLES[1:]:
        text = json.dumps(_table(lakehouse, spec).to_pylist(), default=str, ensure_ascii=False)
        assert not leaks(text, secrets), spec.qualified_name
    assert not leaks(dicom_run["report"], secrets), "report.html"
    assert not leaks(dicom_run["output"], secrets), "pipeline and report output"


def test_dicom_rows_without_a_key_fail_naming_the_variable(tmp_path, shared_data):
    src = tmp_path / "landing"
    write_sources(src, {"NORMAL": []})
    run = _cli(
        "pipeline",
        "run",
        "--source",
        str(src),
        "--lakehouse",
        str(tmp_path / "lh"),
        "--no-progress",
        key=None,
        cwd=tmp_path,
    )
    assert run.returncode == 2  # a missing setting, like a bad argument (docs/security.md)
    assert "CXRLAKE_DEID_KEY" in run.stderr
    assert "DICOM image(s) to de-identify" in run.stderr
    # bronze holds the files; silver nothing: the next run with a key finishes the job
    silver = _table(tmp_path / "lh", schemas.SILVER)
    assert silver.num_rows == 0


def test_the_metadata_kernel_skips_jpegs_and_names_a_broken_dicom(shared_data):
    jpeg = next((shared_data / "chest_xray" / "train" / "NORMAL").glob("*.jpeg")).read_bytes()
    ct = find("CT_small.dcm").read_bytes()
    out = cxrlake.dicom_metadata([jpeg, ct, ct[:1000], None])
    metadata, errors = out.column("metadata").to_pylist(), out.column("error").to_pylist()
    assert metadata[0] is None and errors[0] is None
    assert json.loads(metadata[1])["00100010"]["Value"] == [{"Alphabetic": "CompressedSamples^CT1"}]
    assert metadata[2] is None and errors[2].startswith("truncated DICOM"), errors[2]
    assert errors[3] == "null input"


def test_listing_takes_extension_less_dicom_only(tmp_path):
    from cxrlake.lakehouse import listing

    folder = tmp_path / "src" / "train" / "NORMAL"
    folder.mkdir(parents=True)
    ct = find("CT_small.dcm").read_bytes()
    (folder / "IM000001").write_bytes(ct)
    (folder / "scan.bin").write_bytes(ct)  # DICOM bytes under another extension: skipped
    (folder / "README").write_text("not DICOM\n" * 20)
    os.mkfifo(folder / "pipe")  # never opened (a read would block)
    os.symlink(folder / "IM000001", folder / "IM000002")  # inside the root: read via its target
    found = {os.path.basename(i.path): type(i).__name__ for i in listing.walk(tmp_path / "src")}
    assert found == {
        "IM000001": "SourceFile",
        "IM000002": "SourceFile",
        "scan.bin": "Skipped",
        "README": "Skipped",
        "pipe": "Skipped",
    }


def test_predict_folder_walk_takes_extension_less_dicom_like_the_listing(tmp_path):
    """`cxrlake predict DIR` (`files.select_images`) takes what the pipeline's listing takes: an
    extension-less file whose content is DICOM; other extension-less files stay skipped."""
    from cxrlake.files import select_images

    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "IM000001").write_bytes(find("CT_small.dcm").read_bytes())
    (folder / "README").write_text("not DICOM\n" * 20)
    os.mkfifo(folder / "pipe")
    selection = select_images([folder])
    assert [os.path.basename(p) for p in selection.images] == ["IM000001"]
    assert sorted(os.path.basename(p) for p in selection.skipped) == ["README", "pipe"]
    r = subprocess.run(
        [sys.executable, "-m", "cxrlake.cli", "predict", str(folder), "--format", "jsonl"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 1 and rows[0]["error"] is None and rows[0]["probability"] is not None


def test_a_lakehouse_of_an_earlier_version_gets_the_dicom_columns(tmp_path, monkeypatch):
    from cxrlake.lakehouse.pipeline import run_pipeline

    lakehouse = tmp_path / "lakehouse"
    for spec, column in (
        (schemas.BRONZE, "dicom_metadata"),
        (schemas.SILVER, "dicom_metadata_deid"),
    ):
        old = pa.schema([f for f in spec.arrow_schema if f.name != column])
        os.makedirs(spec.path(lakehouse, "dev"))
        DeltaTable.create(spec.path(lakehouse, "dev"), old, configuration=schemas.TABLE_PROPERTIES)
    src = tmp_path / "landing" / "train" / "NORMAL"
    src.mkdir(parents=True)
    (src / "IM000001").write_bytes(find("CT_small.dcm").read_bytes())
    monkeypatch.setenv("CXRLAKE_DEID_KEY", TEST_KEY)
    run_pipeline([tmp_path / "landing"], lakehouse, progress=False)
    (meta,) = _table(lakehouse, schemas.BRONZE)["dicom_metadata"].to_pylist()
    (deid,) = _table(lakehouse, schemas.SILVER)["dicom_metadata_deid"].to_pylist()
    assert json.loads(meta)["00100020"]["Value"] == ["1CT1"]
    assert json.loads(deid)["00100020"]["Value"] != ["1CT1"]


def test_spark_tables_of_an_earlier_version_get_the_dicom_columns():
    from cxrlake.spark.jobs import add_columns_statement

    bronze = [f.name for f in schemas.BRONZE.arrow_schema if f.name != "dicom_metadata"]
    assert (
        add_columns_statement("c.bronze.kaggle_xray_metadata", schemas.BRONZE, bronze)
        == "ALTER TABLE c.bronze.kaggle_xray_metadata ADD COLUMNS (`dicom_metadata` STRING)"
    )
    assert add_columns_statement("c.s.t", schemas.SILVER, schemas.SILVER.arrow_schema.names) is None
    with pytest.raises(ValueError, match="lacks required column"):
        add_columns_statement("c.s.t", schemas.SILVER, ["label"])


def test_the_spark_jobs_read_the_key_from_the_environment_or_the_secret_scope():
    from cxrlake.exceptions import InvalidArgumentError
    from cxrlake.spark.jobs import read_deid_key as deid_key

    class Secrets:
        def __init__(self, values):
            self.values = values

        def get(self, scope, key):
            return self.values[(scope, key)]  # KeyError like a missing secret

    class DbUtils:
        def __init__(self, values):
            self.secrets = Secrets(values)

    key = "k" * 24
    assert deid_key(None, environ={"CXRLAKE_DEID_KEY": key}) == key.encode()
    assert deid_key(DbUtils({("cxrlake", "deid-key"): key}), environ={}) == key.encode()
    assert deid_key(DbUtils({}), environ={}) is None  # no DICOM, no key needed
    with pytest.raises(InvalidArgumentError, match="shorter than 16 bytes"):
        deid_key(DbUtils({("cxrlake", "deid-key"): "short"}), environ={})


def test_metadata_leaves_bulk_data_out_and_is_capped(tmp_path):
    import warnings

    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(find("CT_small.dcm"))
        ds.add_new(0x00091010, "LO", "CXRLAKE TEST")  # private creator
        ds.add_new(0x00091011, "OB", b"\x01\x02")  # small binary: inlined
        ds.add_new(0x00091012, "OB", bytes(1000))  # bulk: left out
        ds.save_as(tmp_path / "small.dcm")
        ds.add_new(0x0040A160, "UT", "x" * (1 << 20))  # a 1 MiB text value
        ds.save_as(tmp_path / "large.dcm")
    out = cxrlake.dicom_metadata([str(tmp_path / "small.dcm"), str(tmp_path / "large.dcm")])
    small = json.loads(out.column("metadata")[0].as_py())
    assert small["00091011"] == {"vr": "OB", "InlineBinary": "AQI="}
    assert "00091012" not in small and "7FE00010" not in small
    assert out.column("metadata")[1].as_py() is None
    assert out.column("error")[1].as_py() == "DICOM metadata exceeds 1 MiB as JSON"
