"""Quarantine reasons without DICOM header values.

The core names what it could not decode, and for DICOM files that can mean a value of the
header: an unknown transfer syntax or SOP class UID (``unknown (1.2.826.0.1.3680043.8.1.99)``),
a photometric interpretation (``"JOHN DOE"`` in a broken file). Reasons are stored in
``silver.quarantine`` and printed by the report, where no header value may go (they can link
back to the hospital's archive, or be PHI typed into the wrong field). `redact_reasons` keeps the
words and replaces such values: a UID not defined by the standard (root ``1.2.840.10008.``)
becomes ``<UID>``, a quoted value that is not a DICOM defined term becomes ``"<value>"``.
"""

from __future__ import annotations

import re

import pyarrow as pa

from cxrlake.deid import STANDARD_UID_ROOT

#: Four or more dot-separated numbers: a UID (or anything shaped like one).
_UID = re.compile(r"(?<![0-9A-Za-z.])[0-9]+(?:\.[0-9]+){3,}(?![0-9A-Za-z])")
#: A value the core quotes (Rust's ``{:?}`` of a string).
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
#: Defined terms the core may quote (PS3.3 C.7.6.3.1.2, photometric interpretations).
DEFINED_TERMS = frozenset(
    {
        "MONOCHROME1",
        "MONOCHROME2",
        "PALETTE COLOR",
        "RGB",
        "HSV",
        "ARGB",
        "CMYK",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_PARTIAL_422",
        "YBR_PARTIAL_420",
        "YBR_ICT",
        "YBR_RCT",
        "",
    }
)


def _uid(match: re.Match[str]) -> str:
    text = match.group(0)
    return text if (text + ".").startswith(STANDARD_UID_ROOT) else "<UID>"


def _quoted(match: re.Match[str]) -> str:
    return match.group(0) if match.group(0)[1:-1] in DEFINED_TERMS else '"<value>"'


def redact_reason(reason: str | None) -> str | None:
    """``reason`` with non-standard UIDs and quoted non-standard values replaced."""
    if not reason:
        return reason
    return _QUOTED.sub(_quoted, _UID.sub(_uid, reason))


def redact_reasons(reasons: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """`redact_reason` over a string column (Python runs per non-null reason only)."""
    values = reasons.to_pylist()
    if not any(values):
        return reasons
    redacted = [redact_reason(v) for v in values]
    if redacted == values:
        return reasons
    out = pa.array(redacted, reasons.type)
    return pa.chunked_array([out]) if isinstance(reasons, pa.ChunkedArray) else out
