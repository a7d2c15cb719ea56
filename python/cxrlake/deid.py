"""De-identification of DICOM metadata (the DICOM JSON model) for everything after bronze.

The rules are a table: :data:`BASIC_PROFILE`, the Basic Application Level Confidentiality
Profile of DICOM PS3.15 Annex E, Table E.1-1 ("Application Level Confidentiality Profile
Attributes", Basic Profile column), https://dicom.nema.org/medical/dicom/current/output/chtml/part15/chapter_E.html#table_E.1-1
as transcribed for the attributes listed below (the ones radiography, CR/DX and secondary capture
objects carry), with two options of the same annex applied on top:

- Retain Longitudinal Temporal Information with Modified Dates (E.3.6): dates and date-times are
  shifted by a per-patient offset (1 to 3650 days back, from a keyed hash of the Patient ID), so
  intervals between a patient's studies are kept; times of day are kept with their dates;
- identifiers and UIDs are replaced by keyed hashes (HMAC-SHA-256) instead of dummies: the same
  patient, study or instance maps to the same pseudonym in every run, and nobody without the key
  can recompute or reverse it. UIDs become ``2.25.<decimal of 128 hash bits>`` (PS3.5 B.2).

Actions (PS3.15 E.1.1): ``D`` replace with a dummy (a keyed hash for identifiers, a shifted date,
``ANONYMOUS`` for person names), ``Z`` zero length (or the same keyed/shifted replacement),
``X`` remove, ``U`` replace the UID, ``K`` keep, ``C`` clean (removed here: free text cannot be
cleaned reliably). Stricter than the table where it is silent: every UID not defined by the
standard (root ``1.2.840.10008.``) is replaced and every unlisted person name removed. Every
private attribute (odd group) is removed; so are curves (50xx) and overlay
data and comments (60xx,3000 / 60xx,4000). Attributes the table does not list are kept, as the
profile prescribes for standard attributes. PatientIdentityRemoved is set to ``YES`` and the
De-identification Method and its code sequence (CID 7050: 113100 Basic Application
Confidentiality Profile, 113107 Retain Longitudinal Temporal Information Modified Dates Option)
name what was done.

An image whose BurnedInAnnotation is ``YES`` may show identifying text in its pixels, which no
metadata rule removes: :func:`deidentify` returns a quarantine reason for it.

The key comes from the environment variable ``CXRLAKE_DEID_KEY`` or, on Databricks, from a secret
(``dbutils.secrets.get(scope, key)``, https://docs.databricks.com/aws/en/security/secrets/); it is
never stored in the repository, a table or a log.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

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

# (tag, keyword, Basic Profile action) from PS3.15 Table E.1-1. Where the table allows a choice
# (X/Z, X/D, Z/D, X/Z/D, X/Z/U*), the strictest action this module can honour is listed.
BASIC_PROFILE: tuple[tuple[str, str, str], ...] = (
    ("00020003", "MediaStorageSOPInstanceUID", "U"),
    ("00080014", "InstanceCreatorUID", "U"),
    ("00080018", "SOPInstanceUID", "U"),
    ("00080012", "InstanceCreationDate", "D"),
    ("00080013", "InstanceCreationTime", "K"),
    ("00080015", "InstanceCoercionDateTime", "X"),
    ("00080020", "StudyDate", "Z"),
    ("00080021", "SeriesDate", "D"),
    ("00080022", "AcquisitionDate", "D"),
    ("00080023", "ContentDate", "D"),
    ("00080024", "OverlayDate", "X"),
    ("00080025", "CurveDate", "X"),
    ("0008002A", "AcquisitionDateTime", "D"),
    ("00080050", "AccessionNumber", "Z"),
    ("00080058", "FailedSOPInstanceUIDList", "U"),
    ("00080080", "InstitutionName", "X"),
    ("00080081", "InstitutionAddress", "X"),
    ("00080082", "InstitutionCodeSequence", "X"),
    ("00080090", "ReferringPhysicianName", "Z"),
    ("00080092", "ReferringPhysicianAddress", "X"),
    ("00080094", "ReferringPhysicianTelephoneNumbers", "X"),
    ("00080096", "ReferringPhysicianIdentificationSequence", "X"),
    ("0008009C", "ConsultingPhysicianName", "Z"),
    ("0008009D", "ConsultingPhysicianIdentificationSequence", "X"),
    ("00080201", "TimezoneOffsetFromUTC", "X"),
    ("00081010", "StationName", "X"),
    ("00081030", "StudyDescription", "X"),
    ("0008103E", "SeriesDescription", "X"),
    ("00081040", "InstitutionalDepartmentName", "X"),
    ("00081041", "InstitutionalDepartmentTypeCodeSequence", "X"),
    ("00081048", "PhysiciansOfRecord", "X"),
    ("00081049", "PhysiciansOfRecordIdentificationSequence", "X"),
    ("00081050", "PerformingPhysicianName", "X"),
    ("00081052", "PerformingPhysicianIdentificationSequence", "X"),
    ("00081060", "NameOfPhysiciansReadingStudy", "X"),
    ("00081062", "PhysiciansReadingStudyIdentificationSequence", "X"),
    ("00081070", "OperatorsName", "X"),
    ("00081072", "OperatorIdentificationSequence", "X"),
    ("00081080", "AdmittingDiagnosesDescription", "X"),
    ("00081084", "AdmittingDiagnosesCodeSequence", "X"),
    ("00081110", "ReferencedStudySequence", "X"),
    ("00081111", "ReferencedPerformedProcedureStepSequence", "X"),
    ("00081120", "ReferencedPatientSequence", "X"),
    ("00081140", "ReferencedImageSequence", "X"),
    ("00081155", "ReferencedSOPInstanceUID", "U"),
    ("00081195", "TransactionUID", "U"),
    ("00082111", "DerivationDescription", "X"),
    ("00084000", "IdentifyingComments", "X"),
    ("00100010", "PatientName", "Z"),
    ("00100020", "PatientID", "Z"),
    ("00100021", "IssuerOfPatientID", "X"),
    ("00100030", "PatientBirthDate", "Z"),
    ("00100032", "PatientBirthTime", "X"),
    ("00100040", "PatientSex", "Z"),
    ("00100050", "PatientInsurancePlanCodeSequence", "X"),
    ("00101000", "OtherPatientIDs", "X"),
    ("00101001", "OtherPatientNames", "X"),
    ("00101002", "OtherPatientIDsSequence", "X"),
    ("00101005", "PatientBirthName", "X"),
    ("00101010", "PatientAge", "X"),
    ("00101020", "PatientSize", "X"),
    ("00101030", "PatientWeight", "X"),
    ("00101040", "PatientAddress", "X"),
    ("00101050", "InsurancePlanIdentification", "X"),
    ("00101060", "PatientMotherBirthName", "X"),
    ("00101080", "MilitaryRank", "X"),
    ("00101081", "BranchOfService", "X"),
    ("00101090", "MedicalRecordLocator", "X"),
    ("00102000", "MedicalAlerts", "X"),
    ("00102110", "Allergies", "X"),
    ("00102150", "CountryOfResidence", "X"),
    ("00102152", "RegionOfResidence", "X"),
    ("00102154", "PatientTelephoneNumbers", "X"),
    ("00102155", "PatientTelecomInformation", "X"),
    ("00102160", "EthnicGroup", "X"),
    ("00102180", "Occupation", "X"),
    ("001021A0", "SmokingStatus", "X"),
    ("001021B0", "AdditionalPatientHistory", "X"),
    ("001021C0", "PregnancyStatus", "X"),
    ("001021D0", "LastMenstrualDate", "X"),
    ("001021F0", "PatientReligiousPreference", "X"),
    ("00102203", "PatientSexNeutered", "X"),
    ("00102297", "ResponsiblePerson", "X"),
    ("00102299", "ResponsibleOrganization", "X"),
    ("00104000", "PatientComments", "X"),
    ("00120010", "ClinicalTrialSponsorName", "D"),
    ("00120020", "ClinicalTrialProtocolID", "D"),
    ("00120030", "ClinicalTrialSiteID", "Z"),
    ("00120031", "ClinicalTrialSiteName", "Z"),
    ("00120040", "ClinicalTrialSubjectID", "D"),
    ("00120042", "ClinicalTrialSubjectReadingID", "D"),
    ("00180010", "ContrastBolusAgent", "X"),
    ("00181000", "DeviceSerialNumber", "X"),
    ("00181002", "DeviceUID", "U"),
    ("00181004", "PlateID", "X"),
    ("00181005", "GeneratorID", "X"),
    ("00181007", "CassetteID", "X"),
    ("00181008", "GantryID", "X"),
    ("00181012", "DateOfSecondaryCapture", "X"),
    ("00181030", "ProtocolName", "X"),
    ("00181200", "DateOfLastCalibration", "X"),
    ("00181201", "TimeOfLastCalibration", "X"),
    ("00181400", "AcquisitionDeviceProcessingDescription", "X"),
    ("00184000", "AcquisitionComments", "X"),
    ("0018700A", "DetectorID", "X"),
    ("0018A003", "ContributionDescription", "X"),
    ("0020000D", "StudyInstanceUID", "U"),
    ("0020000E", "SeriesInstanceUID", "U"),
    ("00200010", "StudyID", "Z"),
    ("00200052", "FrameOfReferenceUID", "U"),
    ("00200200", "SynchronizationFrameOfReferenceUID", "U"),
    ("00203401", "ModifyingDeviceID", "X"),
    ("00203404", "ModifyingDeviceManufacturer", "X"),
    ("00203406", "ModifiedImageDescription", "X"),
    ("00204000", "ImageComments", "X"),
    ("00209158", "FrameComments", "X"),
    ("00209161", "ConcatenationUID", "U"),
    ("00209164", "DimensionOrganizationUID", "U"),
    ("00281199", "PaletteColorLookupTableUID", "U"),
    ("00284000", "ImagePresentationComments", "X"),
    ("00321032", "RequestingPhysician", "X"),
    ("00321033", "RequestingService", "X"),
    ("00321060", "RequestedProcedureDescription", "X"),
    ("00324000", "StudyComments", "X"),
    ("00380010", "AdmissionID", "X"),
    ("00380300", "CurrentPatientLocation", "X"),
    ("00380400", "PatientInstitutionResidence", "X"),
    ("00380500", "PatientState", "X"),
    ("00384000", "VisitComments", "X"),
    ("00400006", "ScheduledPerformingPhysicianName", "X"),
    ("00400241", "PerformedStationAETitle", "X"),
    ("00400242", "PerformedStationName", "X"),
    ("00400243", "PerformedLocation", "X"),
    ("00400244", "PerformedProcedureStepStartDate", "X"),
    ("00400245", "PerformedProcedureStepStartTime", "X"),
    ("00400253", "PerformedProcedureStepID", "X"),
    ("00400254", "PerformedProcedureStepDescription", "X"),
    ("00400275", "RequestAttributesSequence", "X"),
    ("00400280", "CommentsOnThePerformedProcedureStep", "X"),
    ("00400555", "AcquisitionContextSequence", "X"),
    ("00401001", "RequestedProcedureID", "X"),
    ("00401010", "NamesOfIntendedRecipientsOfResults", "X"),
    ("00401101", "PersonIdentificationCodeSequence", "D"),
    ("00401102", "PersonAddress", "X"),
    ("00401103", "PersonTelephoneNumbers", "X"),
    ("00401400", "RequestedProcedureComments", "X"),
    ("00402016", "PlacerOrderNumberImagingServiceRequest", "Z"),
    ("00402017", "FillerOrderNumberImagingServiceRequest", "Z"),
    ("00402400", "ImagingServiceRequestComments", "X"),
    ("0040A073", "VerifyingObserverSequence", "D"),
    ("0040A075", "VerifyingObserverName", "D"),
    ("0040A123", "PersonName", "D"),
    ("0040A124", "UID", "U"),
    ("0040A730", "ContentSequence", "X"),
    ("0040DB0C", "TemplateExtensionOrganizationUID", "U"),
    ("0040DB0D", "TemplateExtensionCreatorUID", "U"),
    ("00700001", "GraphicAnnotationSequence", "X"),
    ("00700084", "ContentCreatorName", "Z"),
    ("00700086", "ContentCreatorIdentificationCodeSequence", "X"),
    ("00880140", "StorageMediaFileSetUID", "U"),
    ("00880200", "IconImageSequence", "X"),
    ("30060024", "ReferencedFrameOfReferenceUID", "U"),
    ("300600C2", "RelatedFrameOfReferenceUID", "U"),
    ("40000010", "Arbitrary", "X"),
    ("40004000", "TextComments", "X"),
    ("40080042", "ResultsIDIssuer", "X"),
    ("40080300", "Impressions", "X"),
    ("FFFAFFFA", "DigitalSignaturesSequence", "X"),
    ("FFFCFFFC", "DataSetTrailingPadding", "X"),
)

_ACTIONS = {tag: action for tag, _keyword, action in BASIC_PROFILE}
_DATE_VRS = {"DA", "DT"}
_ID_VRS = {"LO", "SH", "CS", "LT", "ST", "UT", "UC"}
_REMOVED_GROUP_PREFIXES = ("50",)  # curves (retired)
_REMOVED_OVERLAY_ELEMENTS = ("3000", "4000")  # overlay data, overlay comments


@dataclass(frozen=True)
class Deidentified:
    """The result of :func:`deidentify`: the de-identified DICOM JSON object and, when the image
    must not go further, the reason to quarantine it (``None`` otherwise)."""

    metadata: dict[str, Any]
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
    value = env.get(KEY_ENV, "")
    source = f"environment variable {KEY_ENV}"
    if not value and secret is not None:
        value = secret(scope, name) or ""
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


def _values(element: Mapping[str, Any]) -> list[Any]:
    return list(element.get("Value") or [])


def _first_text(dataset: Mapping[str, Any], tag: str) -> str:
    values = _values(dataset.get(tag) or {})
    if not values:
        return ""
    value = values[0]
    if isinstance(value, dict):  # PN: {"Alphabetic": ...}
        return str(value.get("Alphabetic", ""))
    return str(value)


def _is_removed_by_group(tag: str) -> bool:
    group = int(tag[:4], 16)
    if group % 2 == 1:
        return True  # private
    if tag.startswith(_REMOVED_GROUP_PREFIXES):
        return True
    return tag[:2] == "60" and tag[4:] in _REMOVED_OVERLAY_ELEMENTS


class _Rules:
    def __init__(self, key: bytes, shift_days: int):
        self.key = key
        self.shift_days = shift_days

    def dataset(self, source: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for tag, element in source.items():
            tag = tag.upper()
            if _is_removed_by_group(tag):
                continue
            replaced = self.element(tag, element)
            if replaced is not None:
                out[tag] = replaced
        return out

    def element(self, tag: str, element: Mapping[str, Any]) -> dict[str, Any] | None:
        vr = element.get("vr", "UN")
        action = _ACTIONS.get(tag, "K")
        if action in ("X", "C"):
            return None
        if vr == "SQ":
            items = [self.dataset(item) for item in _values(element)]
            return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        values = _values(element)
        if vr == "UI":
            # Every UID not defined by the standard is replaced, listed in the table or not.
            return {
                "vr": "UI",
                "Value": [
                    v if str(v).startswith(STANDARD_UID_ROOT) else pseudonym_uid(self.key, str(v))
                    for v in values
                ],
            }
        if vr == "PN" and action == "K":
            return None  # a person's name the table does not list: removed, never kept
        if action == "K" and vr not in _DATE_VRS:
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
        if vr == "TM":
            return copy.deepcopy(dict(element))
        return {"vr": vr}  # any other VR under D/Z: zero length


def deidentify(metadata: Mapping[str, Any], key: bytes) -> Deidentified:
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
