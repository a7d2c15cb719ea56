"""De-identification is an allow list built from PS3.15 Table E.1-1 (issue 25).

The profile is checked against the standard's table shipped with the package and against
pydicom's data dictionary; PHI planted in every attribute of the table the profile removes or
replaces, in unknown public and private tags, in values of VR UN and in OriginalAttributesSequence
goes through the pipeline and none of it is found past bronze (while bronze keeps it, so the
search can fail).
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from dicom_support import TEST_KEY, find, leaks

from cxrlake import deid
from cxrlake.medallion import schemas

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pydicom
    from pydicom import datadict
    from pydicom.dataset import Dataset

KEY = TEST_KEY.encode()
#: groups that cannot be written into a data set (command, file meta, DICOMDIR, signatures)
UNWRITABLE_GROUPS = ("0000", "0002", "0004", "FFFA", "FFFC")


def _words(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("'s ", " "))


def test_the_profile_is_generated_from_the_standard_table():
    rows = deid.standard_table()
    assert len(rows) >= 600, "the table of PS3.15 E.1-1 (2024b has 621 rows)"
    profile = {tag: action for tag, _name, action in deid.BASIC_PROFILE}
    assert len(profile) == len(rows)
    for row in rows:
        choices = set(row.basic_profile.replace("*", "").split("/"))
        if row.modified_dates == "C":
            choices.add("C")  # the chosen option (E.3.6)
        assert profile[row.key] in choices, row
    by_key = {row.key: row for row in rows}
    # the attributes the adversarial pass found kept, as the standard lists them
    for tag, action in {
        "00401002": "X",  # ReasonForTheRequestedProcedure
        "00400007": "X",  # ScheduledProcedureStepDescription
        "00380050": "X",  # SpecialNeeds
        "00402010": "X",  # OrderCallbackPhoneNumber
        "04000561": "X",  # OriginalAttributesSequence
        "00100010": "Z",  # PatientName
        "00080020": "C",  # StudyDate: shifted by the Modified Dates option
    }.items():
        assert profile[tag] == action, by_key[tag]


def test_the_standard_table_agrees_with_pydicoms_dictionary():
    """Every fixed tag of the shipped table is a tag of pydicom's data dictionary, under the
    same name (pydicom's names come from PS3.6; the table is PS3.15's)."""
    mismatched = []
    for row in deid.standard_table():
        if row.is_pattern:
            continue
        tag = int(row.key, 16)
        assert datadict.dictionary_has_tag(tag), row
        if _words(datadict.dictionary_description(tag)) != _words(row.name):
            mismatched.append((row.key, row.name, datadict.dictionary_description(tag)))
    assert len(mismatched) <= 10, mismatched  # editorial differences between the parts only


def test_the_retained_attributes_are_named_right_and_none_is_in_the_table():
    listed = {row.key for row in deid.standard_table()}
    for tag, keyword in deid.RETAINED:
        assert datadict.keyword_for_tag(int(tag, 16)) == keyword, tag
        assert tag not in listed, keyword
        assert datadict.dictionary_VR(int(tag, 16)) not in ("PN", "UN"), keyword
        assert int(tag[:4], 16) % 2 == 0, keyword


# ---------------------------------------------------------------------------------------------
# PHI planted in every attribute


def _vr(tag: int) -> str:
    return datadict.dictionary_VR(tag).split(" or ")[0]


def _value(vr: str, i: int):
    """A value of ``vr`` that names attribute number ``i``; text values hold ``PHI<i>``."""
    marker = f"PHI{i:04d}"
    if vr in ("AE", "CS", "SH", "LO", "LT", "ST", "UT", "UC"):
        return marker
    if vr == "PN":
        return f"{marker}^PATIENT"
    if vr == "UR":
        return f"http://{marker.lower()}.example/"
    if vr == "DA":
        return f"{1900 + i % 100:04d}0{1 + i % 9}1{i % 9}"
    if vr == "DT":
        return f"{1900 + i % 100:04d}0{1 + i % 9}1{i % 9}101010"
    if vr == "TM":
        return "101010"
    if vr == "UI":
        return f"1.2.826.0.1.3680043.99.{i}"
    if vr == "AS":
        return "042Y"
    if vr in ("DS", "FD", "FL"):
        return 12.5
    if vr in ("IS", "US", "SS", "UL", "SL", "UV", "SV", "AT"):
        return 7
    return marker.encode() + b" "  # OB, OW, UN, ...


def _phi_item(i: int) -> Dataset:
    item = Dataset()
    item.PatientName = f"PHI{i:04d}^NESTED"
    item.PatientID = f"PHI{i + 1:04d}"
    return item


def planted_dataset() -> tuple[Dataset, dict[str, str], set[str]]:
    """CT_small with a value in every writable attribute of Table E.1-1, unknown public tags,
    private tags, a UN value and OriginalAttributesSequence. Returns the data set, the planted
    tags by action, and the text markers that must not pass bronze."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(find("CT_small.dcm"))
    planted: dict[str, str] = {}
    markers: set[str] = set()
    for i, (tag_text, _name, action) in enumerate(deid.BASIC_PROFILE, start=1):
        if not re.fullmatch(r"[0-9A-F]{8}", tag_text) or tag_text.startswith(UNWRITABLE_GROUPS):
            continue
        tag = int(tag_text, 16)
        if tag == 0x00100020:
            continue  # PatientID keeps CT_small's own (the date shift keys on it)
        vr = _vr(tag)
        if vr == "SQ":
            value = [_phi_item(i)]
            markers |= {f"PHI{i:04d}", f"PHI{i + 1:04d}"}
        else:
            value = _value(vr, i)
            if isinstance(value, str) and "PHI" in value and action != "C":
                markers.add(f"PHI{i:04d}")
            if vr == "UI":
                markers.add(value)
        ds.add_new(tag, vr, value)
        planted[tag_text] = action
    # curves, overlays and private attributes (pattern rows of the table)
    ds.add_new(0x50002500, "LO", "PHI9001")
    ds.add_new(0x60004000, "LT", "PHI9002")
    ds.add_new(0x00090010, "LO", "PHI9003 CREATOR")
    ds.add_new(0x00091001, "LO", "PHI9004")
    # unknown public attributes, one of them UN; a known attribute with a UN value
    ds.add_new(0x0018FFF0, "LO", "PHI9005")
    ds.add_new(0x0020FFF2, "UN", b"PHI9006 ")
    ds.add_new(0x00181030, "UN", b"PHI9007 ")  # ProtocolName, value of VR UN
    # the original values the standard's sequence keeps
    original = Dataset()
    original.SourceOfPreviousValues = "PHI9008"
    modified = Dataset()
    modified.PatientName = "PHI9009^ORIGINAL"
    original.ModifiedAttributesSequence = [modified]
    ds.OriginalAttributesSequence = [original]
    markers |= {f"PHI{9000 + n:04d}" for n in range(1, 10)}
    return ds, planted, markers


def test_every_attribute_not_kept_is_removed_from_the_metadata(tmp_path):
    """Unit level: the DICOM JSON of the planted file, de-identified."""
    ds, planted, markers = planted_dataset()
    path = tmp_path / "planted.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path)
    import cxrlake

    out = cxrlake.dicom_metadata([path.read_bytes()])
    assert out.column("error")[0].as_py() is None, out.column("error")[0]
    original = json.loads(out.column("metadata")[0].as_py())
    assert leaks(json.dumps(original), markers), "bronze's JSON holds the planted values"
    result = deid.deidentify(original, KEY).metadata
    text = json.dumps(result)
    assert not leaks(text, markers)
    for tag, action in planted.items():
        if action == "X":
            assert tag not in result, tag
        elif tag in result and tag in original:
            assert result[tag] != original[tag] or action == "C", tag
    kept = set(dict(deid.RETAINED)) | {t for t, _n, a in deid.BASIC_PROFILE if a != "X"}
    kept |= {"00120062", "00120063", "00120064", "00280303"}  # what deidentify adds
    assert set(result) <= kept, sorted(set(result) - kept)
    for tag in ("0018FFF0", "0020FFF2", "00181030", "04000561", "00091001", "50002500"):
        assert tag not in result


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, shared_data):
    from cxrlake.lakehouse.pipeline import run_pipeline
    from cxrlake.lakehouse.report import write_report

    root = tmp_path_factory.mktemp("planted")
    folder = root / "landing" / "train" / "NORMAL"
    folder.mkdir(parents=True)
    jpeg = sorted((shared_data / "chest_xray" / "train" / "NORMAL").glob("*.jpeg"))[0]
    shutil.copyfile(jpeg, folder / jpeg.name)
    ds, planted, markers = planted_dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(folder / "planted.dcm")
    # Files the core cannot decode, whose error would name a header value: an unknown transfer
    # syntax UID, and a private SOP class without pixel data.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        odd = pydicom.dcmread(find("CT_small.dcm"))
        odd.file_meta.TransferSyntaxUID = PRIVATE_SYNTAX
        odd.save_as(folder / "unknown_syntax.dcm", enforce_file_format=True)
        bare = pydicom.dcmread(find("CT_small.dcm"))
        del bare.PixelData
        bare.SOPClassUID = bare.file_meta.MediaStorageSOPClassUID = PRIVATE_SOP_CLASS
        bare.save_as(folder / "no_pixels.dcm", enforce_file_format=True)
    lakehouse = root / "lakehouse"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXRLAKE_DEID_KEY", TEST_KEY)
        run_pipeline([root / "landing"], lakehouse, progress=False)
    write_report(lakehouse, root / "report.html")
    return lakehouse, (root / "report.html").read_text(), markers


PRIVATE_SYNTAX = "1.2.826.0.1.3680043.99.4242.1"
PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.99.4242.2"


def _table(lakehouse: Path, spec: schemas.TableSpec) -> pa.Table:
    return DeltaTable(spec.path(lakehouse, "dev")).to_pyarrow_table()


def test_no_planted_phi_passes_bronze(planted_run):
    lakehouse, report, markers = planted_run
    bronze = _table(lakehouse, schemas.BRONZE).drop_columns(["content"])
    assert leaks(json.dumps(bronze.to_pylist(), default=str), markers), "bronze keeps them"
    silver = _table(lakehouse, schemas.SILVER)
    deidentified = [m for m in silver["dicom_metadata_deid"].to_pylist() if m is not None]
    assert len(deidentified) == 1, "the planted file reached silver"
    for spec in schemas.TABLES[1:]:
        text = json.dumps(_table(lakehouse, spec).to_pylist(), default=str, ensure_ascii=False)
        assert not leaks(text, markers), spec.qualified_name
    assert not leaks(report, markers), "report.html"


def test_quarantine_reasons_carry_no_header_values(planted_run):
    lakehouse, report, _markers = planted_run
    quarantine = _table(lakehouse, schemas.QUARANTINE)
    reasons = dict(
        zip(quarantine["filename"].to_pylist(), quarantine["reason"].to_pylist(), strict=True)
    )
    assert "transfer syntax" in reasons["unknown_syntax.dcm"], reasons
    assert "<UID>" in reasons["unknown_syntax.dcm"]
    assert reasons["no_pixels.dcm"].startswith("DICOM file has no pixel data"), reasons
    assert "<UID>" in reasons["no_pixels.dcm"]
    for uid in (PRIVATE_SYNTAX, PRIVATE_SOP_CLASS):
        assert uid not in json.dumps(quarantine.to_pylist(), default=str)
        assert uid not in report
        assert uid not in json.dumps(_table(lakehouse, schemas.SILVER).to_pylist(), default=str)


def test_redaction_keeps_the_words_and_standard_values():
    from cxrlake.medallion.redact import redact_reason

    assert (
        redact_reason(
            "unsupported DICOM transfer syntax: JPEG-LS Lossless (1.2.840.10008.1.2.4.80)"
        )
        == "unsupported DICOM transfer syntax: JPEG-LS Lossless (1.2.840.10008.1.2.4.80)"
    )
    assert (
        redact_reason("unsupported DICOM transfer syntax: unknown (1.2.826.0.1.3680043.8.1)")
        == "unsupported DICOM transfer syntax: unknown (<UID>)"
    )
    assert (
        redact_reason('unsupported DICOM photometric interpretation: "DOE^JOHN" with 1 samples')
        == 'unsupported DICOM photometric interpretation: "<value>" with 1 samples'
    )
    assert redact_reason('photometric interpretation: "PALETTE COLOR"').endswith('"PALETTE COLOR"')
    for kept in ("image 3x4 smaller than 64 px minimum side", "truncated JPEG", None, ""):
        assert redact_reason(kept) == kept
