"""Writing the list of films the shipped model was developed on (``cxrlake train``).

The list's format and every check against it belong to the provenance service,
`cxrlake.provenance`; training writes it next to the model it ships.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from cxrlake.provenance import FILE_NAME, content_key, patient_key
from cxrlake.training.data import LABELS, LabelledImage


def write_development_films(records: Iterable[LabelledImage], path: str | os.PathLike[str]) -> int:
    """Write the key list of ``records`` to ``path``; returns its length."""
    keys: set[str] = set()
    for record in records:
        with open(record.path, "rb") as handle:
            keys.add(content_key(hashlib.sha256(handle.read()).hexdigest()))
        keys.add(patient_key(LABELS[record.label], Path(record.path).name))
    header = (
        "# Films the shipped model was developed on (training and validation):\n"
        "# c:<sha256 prefix> of the bytes, p:<sha256 prefix> of CATEGORY/patient id.\n"
        "# See cxrlake.provenance.\n"
    )
    Path(path).write_text(header + "\n".join(sorted(keys)) + "\n")
    return len(keys)


__all__ = ["FILE_NAME", "write_development_films"]
