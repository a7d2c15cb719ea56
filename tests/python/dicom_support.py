"""DICOM sources for the pipeline suites: real files from pydicom's wheel and pydicom-data (as
``test_dicom.py`` finds them), a copy marked BurnedInAnnotation = YES and an extension-less
copy, beside real JPEGs; and the identifying strings of their headers, to look for leaks."""

from __future__ import annotations

import importlib.util
import re
import shutil
import warnings
from pathlib import Path

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pydicom

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
_DATA_STORE = importlib.util.find_spec("data_store")
assert _DATA_STORE is not None, "pydicom-data is not installed (requirements-dicom-test.txt)"
DATA_STORE = Path(next(iter(_DATA_STORE.submodule_search_locations))) / "data"

DICOM_SOURCES = ("CT_small.dcm", "MR_small.dcm", "RG1_UNCR.dcm")
TEST_KEY = "a pipeline test key, not a secret"


def find(name: str) -> Path:
    for folder in (PYDICOM_FILES, DATA_STORE):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(name)


def write_sources(root: Path, jpegs: dict[str, list[Path]]) -> dict[str, Path]:
    """A source tree ``root/train/<LABEL>/``: the ``jpegs`` per label, the `DICOM_SOURCES`
    (CT and MR under NORMAL, the chest film under PNEUMONIA), ``burned_in.dcm`` (MR_small with
    BurnedInAnnotation YES, written by pydicom), ``IM000001`` (CT_small without an extension)
    and ``README`` (an extension-less text file, skipped). Returns the DICOM paths by role."""
    for label, files in jpegs.items():
        (root / "train" / label).mkdir(parents=True, exist_ok=True)
        for p in files:
            shutil.copyfile(p, root / "train" / label / p.name)
    normal, pneumonia = root / "train" / "NORMAL", root / "train" / "PNEUMONIA"
    normal.mkdir(parents=True, exist_ok=True)
    pneumonia.mkdir(parents=True, exist_ok=True)
    out = {
        "ct": normal / "CT_small.dcm",
        "mr": normal / "MR_small.dcm",
        "chest": pneumonia / "RG1_UNCR.dcm",
        "burned_in": pneumonia / "burned_in.dcm",
        "bare": normal / "IM000001",
    }
    shutil.copyfile(find("CT_small.dcm"), out["ct"])
    shutil.copyfile(find("MR_small.dcm"), out["mr"])
    shutil.copyfile(find("RG1_UNCR.dcm"), out["chest"])
    shutil.copyfile(find("CT_small.dcm"), out["bare"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(find("MR_small.dcm"))
        ds.BurnedInAnnotation = "YES"
        ds.save_as(out["burned_in"])
    (normal / "README").write_text("an extension-less file that is not DICOM\n" * 8)
    return out


def dicom_json(path: Path) -> dict:
    """The DICOM JSON model of a file without its pixel data (pydicom's, for reference)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return {**ds.file_meta.to_json_dict(), **ds.to_json_dict(bulk_data_threshold=1 << 20)}


def identifying_strings(obj, vr: str | None = None) -> set[str]:
    """Names, IDs, dates and non-standard UIDs anywhere in a DICOM JSON object."""
    found: set[str] = set()
    if isinstance(obj, dict) and "vr" in obj:
        for value in obj.get("Value") or []:
            if obj["vr"] == "SQ":
                found |= identifying_strings(value)
            elif obj["vr"] == "PN" and isinstance(value, dict):
                found |= {v for v in value.values() if len(v.strip()) >= 3}
            elif obj["vr"] in ("DA", "DT") and len(str(value)) >= 8:
                found.add(str(value)[:8])
            elif obj["vr"] == "UI" and not str(value).startswith("1.2.840.10008."):
                found.add(str(value))
        return found
    if isinstance(obj, dict):
        for tag, element in obj.items():
            strings = identifying_strings(element)
            if tag in ("00100020", "00080050", "00200010") and element.get("Value"):
                strings |= {str(v) for v in element["Value"] if len(str(v)) >= 3}
            found |= strings
    return found


def leaks(text: str, secrets: set[str]) -> list[str]:
    """The ``secrets`` found in ``text``, sorted: each where no digit, letter or ``.`` precedes
    it (so a date does not 'leak' from the middle of a float's digits or of a pseudonym UID) and
    no letter follows it (a date-time still counts for its date)."""
    return sorted(
        s for s in secrets if re.search(r"(?<![0-9A-Za-z.])" + re.escape(s) + r"(?![A-Za-z])", text)
    )
