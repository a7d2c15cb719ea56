"""De-identification of DICOM metadata (the DICOM JSON model) for everything after bronze.

The profile is an allow list: an attribute leaves bronze only when a rule below names it, every
other one is removed: unknown public attributes, private attributes, values of VR UN and
sequences that carry original values (OriginalAttributesSequence, ...) included.

1. :data:`BASIC_PROFILE`: every attribute of DICOM PS3.15 Table E.1-1 ("Application Level
   Confidentiality Profile Attributes", Basic Profile column), read from the table itself as
   shipped with the package (``deid_ps3_15_e1_1.csv``, edition 2024b, its source named in the
   file), https://dicom.nema.org/medical/dicom/current/output/chtml/part15/chapter_E.html#table_E.1-1
   with one option of the same annex:

   - Retain Longitudinal Temporal Information with Modified Dates (E.3.6), the table's own
     option column: dates and date-times are shifted by a per-patient offset (1 to 3650 days
     back, from a keyed hash of the Patient ID), so intervals between a patient's studies are
     kept; times of day are kept with their dates.

   Where the table allows a choice (X/Z, X/D, X/Z/D, X/Z/U*, Z/D), the strictest action is
   taken: ``X`` when allowed, else ``U``, ``Z``, ``D``. Identifiers and UIDs are replaced by keyed
   hashes (HMAC-SHA-256) instead of dummies: the same patient, study or instance maps to the same
   pseudonym in every run, and nobody without the key can recompute or reverse it. UIDs become
   ``2.25.<decimal of 128 hash bits>`` (PS3.5 B.2).
2. :data:`RETAINED`: the attributes kept as they are, none of them in Table E.1-1: what the
   image is (SOP class, modality, body part, view, laterality), how its pixels are stored and
   shown (the Image Pixel, Modality LUT and VOI LUT attributes), how it was acquired (exposure,
   geometry, device make and model) and the code items of the coded ones. UIDs among them are
   kept only when the standard defines them (root ``1.2.840.10008.``), otherwise replaced.

Actions (PS3.15 E.1.1): ``D`` replace with a dummy (a keyed hash for identifiers, a shifted date,
``ANONYMOUS`` for person names, zero length for other values; a sequence is emptied), ``Z`` zero
length (or the same keyed/shifted replacement), ``X`` remove, ``U`` replace the UID, ``C`` the
option's clean (dates shifted, times kept, other values removed), ``K`` keep (the retained list).
Values of VR UN are removed wherever they occur: their meaning is unknown, so no rule can vouch
for them. PatientIdentityRemoved is set to ``YES`` and the De-identification Method and its code
sequence (CID 7050: 113100 Basic Application Confidentiality Profile, 113107 Retain Longitudinal
Temporal Information Modified Dates Option) name what was done.

An image whose BurnedInAnnotation is ``YES`` may show identifying text in its pixels, which no
metadata rule removes: :func:`deidentify` returns a quarantine reason for it.

The key comes from the environment variable ``CXRLAKE_DEID_KEY`` or, on Databricks, from a secret
(``dbutils.secrets.get(scope, key)``, https://docs.databricks.com/aws/en/security/secrets/); it is
never stored in the repository, a table or a log.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import hashlib
import hmac
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources

from cxrlake.exceptions import InvalidArgumentError

KEY_ENV = "CXRLAKE_DEID_KEY"
#: Shorter keys are refused: an HMAC key must not be guessable.
MIN_KEY_BYTES = 16
#: The largest per-patient date shift, in days (the shift is 1 to this many days back).
MAX_SHIFT_DAYS = 3650

#: De-identification Method (LO: at most 64 characters).
METHOD = "PS3.15 E.1-1 Basic Profile; Modified Dates; keyed-hash IDs/UIDs"
#: UIDs defined by the DICOM standard itself (SOP classes, transfer syntaxes): never identifying.
STANDARD_UID_ROOT = "1.2.840.10008."

#: The copy of PS3.15 Table E.1-1 in the package (see the header of the file for its source).
STANDARD_TABLE = "deid_ps3_15_e1_1.csv"


@dataclass(frozen=True)
class StandardRow:
    """One row of PS3.15 Table E.1-1: the tag as printed (``(0010,0010)``, ``(50XX,XXXX)``),
    the attribute's name, the Basic Profile action and the Modified Dates option's action."""

    tag: str
    name: str
    basic_profile: str
    modified_dates: str

    @property
    def key(self) -> str:
        """The tag as in DICOM JSON (``00100010``); patterns keep their ``X`` digits."""
        return self.tag[1:5].upper() + self.tag[6:10].upper()

    @property
    def is_pattern(self) -> bool:
        """Whether the row names a group of tags (curves, overlays, private attributes)."""
        return not all(c in "0123456789ABCDEF" for c in self.key)


def standard_table() -> tuple[StandardRow, ...]:
    """The rows of PS3.15 Table E.1-1 as shipped with the package."""
    text = resources.files("cxrlake").joinpath(STANDARD_TABLE).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    return tuple(
        StandardRow(
            r["tag"], r["name"], r["basic_profile"], r["retain_longitudinal_modified_dates"]
        )
        for r in csv.DictReader(lines)
    )


def chosen_action(row: StandardRow) -> str:
    """The action this module applies to a row of Table E.1-1: the Modified Dates option's
    ``C`` where the table gives one, else the strictest of the Basic Profile's choices."""
    if row.modified_dates == "C":
        return "C"
    choices = row.basic_profile.replace("*", "").split("/")
    return next(action for action in ("X", "U", "Z", "D") if action in choices)


#: (tag, name, action) for every attribute of Table E.1-1 (patterns such as curves ``50XXXXXX``
#: and private attributes included: their action is ``X``, as for anything not retained).
BASIC_PROFILE: tuple[tuple[str, str, str], ...] = tuple(
    (row.key, row.name, chosen_action(row)) for row in standard_table()
)

#: (tag, keyword) of the attributes kept as they are (action ``K``); none is in Table E.1-1.
RETAINED: tuple[tuple[str, str], ...] = (
    # File meta information and SOP common: what kind of object, how it is encoded
    ("00020002", "MediaStorageSOPClassUID"),
    ("00020010", "TransferSyntaxUID"),
    ("00020012", "ImplementationClassUID"),
    ("00080005", "SpecificCharacterSet"),
    ("00080008", "ImageType"),
    ("00080016", "SOPClassUID"),
    ("00080060", "Modality"),
    ("00080064", "ConversionType"),
    ("00080068", "PresentationIntentType"),
    ("00080070", "Manufacturer"),
    ("00081090", "ManufacturerModelName"),
    ("00181020", "SoftwareVersions"),
    # what the image shows
    ("00080100", "CodeValue"),
    ("00080102", "CodingSchemeDesignator"),
    ("00080103", "CodingSchemeVersion"),
    ("00080104", "CodeMeaning"),
    ("00082218", "AnatomicRegionSequence"),
    ("00180015", "BodyPartExamined"),
    ("00185100", "PatientPosition"),
    ("00185101", "ViewPosition"),
    ("00540220", "ViewCodeSequence"),
    ("00200020", "PatientOrientation"),
    ("00200060", "Laterality"),
    ("00200062", "ImageLaterality"),
    ("00280301", "BurnedInAnnotation"),
    ("00280302", "RecognizableVisualFeatures"),
    # acquisition
    ("00180020", "ScanningSequence"),
    ("00180021", "SequenceVariant"),
    ("00180022", "ScanOptions"),
    ("00180023", "MRAcquisitionType"),
    ("00180050", "SliceThickness"),
    ("00180060", "KVP"),
    ("00180080", "RepetitionTime"),
    ("00180081", "EchoTime"),
    ("00180087", "MagneticFieldStrength"),
    ("00180088", "SpacingBetweenSlices"),
    ("00181110", "DistanceSourceToDetector"),
    ("00181111", "DistanceSourceToPatient"),
    ("00181114", "EstimatedRadiographicMagnificationFactor"),
    ("00181150", "ExposureTime"),
    ("00181151", "XRayTubeCurrent"),
    ("00181152", "Exposure"),
    ("00181153", "ExposureInuAs"),
    ("00181160", "FilterType"),
    ("00181164", "ImagerPixelSpacing"),
    ("00181166", "Grid"),
    ("00181190", "FocalSpots"),
    ("00181314", "FlipAngle"),
    ("00181411", "ExposureIndex"),
    ("00181412", "TargetExposureIndex"),
    ("00181413", "DeviationIndex"),
    ("00186000", "Sensitivity"),
    ("00200032", "ImagePositionPatient"),
    ("00200037", "ImageOrientationPatient"),
    ("00201041", "SliceLocation"),
    # image pixel description and display (Modality LUT, VOI LUT)
    ("00280002", "SamplesPerPixel"),
    ("00280004", "PhotometricInterpretation"),
    ("00280006", "PlanarConfiguration"),
    ("00280008", "NumberOfFrames"),
    ("00280010", "Rows"),
    ("00280011", "Columns"),
    ("00280030", "PixelSpacing"),
    ("00280034", "PixelAspectRatio"),
    ("00280100", "BitsAllocated"),
    ("00280101", "BitsStored"),
    ("00280102", "HighBit"),
    ("00280103", "PixelRepresentation"),
    ("00280106", "SmallestImagePixelValue"),
    ("00280107", "LargestImagePixelValue"),
    ("00280120", "PixelPaddingValue"),
    ("00281040", "PixelIntensityRelationship"),
    ("00281041", "PixelIntensityRelationshipSign"),
    ("00281050", "WindowCenter"),
    ("00281051", "WindowWidth"),
    ("00281052", "RescaleIntercept"),
    ("00281053", "RescaleSlope"),
    ("00281054", "RescaleType"),
    ("00281056", "VOILUTFunction"),
    ("00282110", "LossyImageCompression"),
    ("00282112", "LossyImageCompressionRatio"),
    ("00282114", "LossyImageCompressionMethod"),
    ("00283000", "ModalityLUTSequence"),
    ("00283002", "LUTDescriptor"),
    ("00283004", "ModalityLUTType"),
    ("00283006", "LUTData"),
    ("00283010", "VOILUTSequence"),
)

_ACTIONS = {tag: action for tag, _name, action in BASIC_PROFILE}
_ACTIONS.update({tag: "K" for tag, _keyword in RETAINED})
_DATE_VRS = {"DA", "DT"}
_ID_VRS = {"LO", "SH", "CS", "LT", "ST", "UT", "UC"}


@dataclass(frozen=True)
class Deidentified:
    """The result of :func:`deidentify`: the de-identified DICOM JSON object and, when the image
    must not go further, the reason to quarantine it (``None`` otherwise)."""

    metadata: dict[str, object]
    quarantine_reason: str | None


def load_key(
    environ: Mapping[str, str] | None = None,
    secret: Callable[[str, str], str] | None = None,
    scope: str = "cxrlake",
    name: str = "deid-key",
) -> bytes:
    """The de-identification key: env ``CXRLAKE_DEID_KEY``, else ``secret(scope, name)`` (pass
    ``dbutils.secrets.get`` on Databricks). Raises InvalidArgumentError when neither gives a key of
    at least 16 bytes; the key itself never appears in a message."""
    env = os.environ if environ is None else environ
    # Surrounding whitespace is never key material: `databricks secrets put-secret` reading
    # standard input stores the trailing newline of `openssl rand -base64 32 | ...`, and $(...)
    # in a shell drops it, so both forms of one key must give the same pseudonyms.
    value = env.get(KEY_ENV, "").strip()
    source = f"environment variable {KEY_ENV}"
    if not value and secret is not None:
        value = (secret(scope, name) or "").strip()
        source = f"Databricks secret {scope}/{name}"
    if not value:
        raise InvalidArgumentError(
            f"no de-identification key: set {KEY_ENV} or a Databricks secret {scope}/{name}"
        )
    key = value.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise InvalidArgumentError(f"the key in {source} is shorter than {MIN_KEY_BYTES} bytes")
    return key


def keyed_hash(key: bytes, kind: str, value: str) -> bytes:
    """HMAC-SHA-256 of ``kind:value``: the same input always maps to the same pseudonym."""
    return hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).digest()


def pseudonym_uid(key: bytes, uid: str) -> str:
    """A UID derived from ``uid`` under ``key``: ``2.25.`` and 128 hash bits in decimal."""
    return "2.25." + str(int.from_bytes(keyed_hash(key, "uid", uid.strip())[:16], "big"))


def pseudonym_id(key: bytes, kind: str, value: str) -> str:
    """A 16-character identifier (fits SH, LO and CS) derived from ``value`` under ``key``."""
    return keyed_hash(key, kind, value.strip()).hex()[:16].upper()


def date_shift_days(key: bytes, patient_id: str) -> int:
    """The per-patient shift: 1 to 3650 days back, from the keyed hash of the Patient ID."""
    digest = keyed_hash(key, "date-shift", patient_id.strip())
    return 1 + int.from_bytes(digest[:8], "big") % MAX_SHIFT_DAYS


def _shift_date(value: str, vr: str, days: int) -> str | None:
    text = value.strip()
    try:
        day = dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None  # not a date: the caller removes it
    shifted = (day - dt.timedelta(days=days)).strftime("%Y%m%d")
    return shifted + text[8:] if vr == "DT" else shifted


def _values(element: Mapping[str, object]) -> list[object]:
    values = element.get("Value") or []
    if not isinstance(values, Iterable):
        raise TypeError(f"a DICOM JSON Value must be a list, not {type(values).__name__}")
    return list(values)


def _first_text(dataset: Mapping[str, object], tag: str) -> str:
    element = dataset.get(tag)
    values = _values(element) if isinstance(element, Mapping) else []
    if not values:
        return ""
    value = values[0]
    if isinstance(value, dict):  # PN: {"Alphabetic": ...}
        return str(value.get("Alphabetic", ""))
    return str(value)


class _Rules:
    def __init__(self, key: bytes, shift_days: int) -> None:
        self.key = key
        self.shift_days = shift_days

    def dataset(self, source: Mapping[str, object]) -> dict[str, object]:
        out: dict[str, object] = {}
        for tag, element in source.items():
            if not isinstance(element, Mapping):
                continue
            tag = str(tag).upper()
            replaced = self.element(tag, element)
            if replaced is not None:
                out[tag] = replaced
        return out

    def element(self, tag: str, element: Mapping[str, object]) -> dict[str, object] | None:
        """The element after its rule, or None to remove it. Not named by a rule: removed."""
        vr = element.get("vr", "UN")
        action = _ACTIONS.get(tag, "X")
        if action == "X" or vr == "UN":
            return None
        if vr == "SQ":
            if action != "K":
                return {"vr": "SQ"}  # D/Z on a sequence: emptied, no item carried over
            items = [self.dataset(item) for item in _values(element) if isinstance(item, Mapping)]
            return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        values = _values(element)
        if vr == "UI":
            # Every UID not defined by the standard is replaced, kept or listed.
            return {
                "vr": "UI",
                "Value": [
                    v if str(v).startswith(STANDARD_UID_ROOT) else pseudonym_uid(self.key, str(v))
                    for v in values
                ],
            }
        if action == "C":  # Modified Dates option: dates shifted, times kept, the rest removed
            if vr == "TM":
                return copy.deepcopy(dict(element))
            if vr not in _DATE_VRS:
                return None
        elif action == "K":
            if vr == "PN":
                return None  # a person's name is never kept as it is
            if vr not in _DATE_VRS:
                return copy.deepcopy(dict(element))
        if not values:
            return {"vr": vr}
        if vr in _DATE_VRS:
            # Kept and replaced dates alike move by the patient's offset (E.3.6).
            shifted = [_shift_date(str(v), vr, self.shift_days) for v in values]
            if any(s is None for s in shifted):
                return None
            return {"vr": vr, "Value": shifted}
        if vr == "PN":
            return {"vr": "PN", "Value": [{"Alphabetic": "ANONYMOUS"}]}
        if vr in _ID_VRS:
            keyword = tag  # the tag names the kind, so equal values of different kinds differ
            return {"vr": vr, "Value": [pseudonym_id(self.key, keyword, str(v)) for v in values]}
        return {"vr": vr}  # any other VR under D/Z (times, numbers, binary): zero length


def deidentify(metadata: Mapping[str, object], key: bytes) -> Deidentified:
    """De-identifies one DICOM JSON object (PS3.18 F.2, as bronze stores it, without pixel data).

    Returns the de-identified object and a quarantine reason when BurnedInAnnotation is ``YES``.
    The input is not modified.
    """
    if len(key) < MIN_KEY_BYTES:
        raise InvalidArgumentError(
            f"the de-identification key is shorter than {MIN_KEY_BYTES} bytes"
        )
    patient_id = _first_text(metadata, "00100020") or _first_text(metadata, "00100010")
    rules = _Rules(key, date_shift_days(key, patient_id))
    out = rules.dataset(metadata)
    out["00120062"] = {"vr": "CS", "Value": ["YES"]}  # PatientIdentityRemoved
    out["00120063"] = {"vr": "LO", "Value": [METHOD]}  # DeidentificationMethod
    out["00120064"] = {  # DeidentificationMethodCodeSequence (CID 7050)
        "vr": "SQ",
        "Value": [
            {
                "00080100": {"vr": "SH", "Value": [code]},
                "00080102": {"vr": "SH", "Value": ["DCM"]},
                "00080104": {"vr": "LO", "Value": [meaning]},
            }
            for code, meaning in (
                ("113100", "Basic Application Confidentiality Profile"),
                ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
            )
        ],
    }
    out["00280303"] = {"vr": "CS", "Value": ["MODIFIED"]}  # LongitudinalTemporalInformationModified
    burned_in = _first_text(metadata, "00280301").strip().upper()
    reason = (
        "BurnedInAnnotation is YES: the pixels may show identifying text"
        if burned_in == "YES"
        else None
    )
    return Deidentified(metadata=dict(sorted(out.items())), quarantine_reason=reason)
