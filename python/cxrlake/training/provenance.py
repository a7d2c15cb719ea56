"""The films the shipped model was developed on: no figure on them may pass as an evaluation.

``models/development_films.sha256`` (written by ``cxrlake train`` next to the shipped model) holds,
one per line, 16-hex-digit prefixes of sha256 keys of every film of the training folder (training
and validation splits alike): ``c:<prefix>`` of the file's bytes and ``p:<prefix>`` of
``"<CATEGORY>/<patient id>"``. Names are hashed: the list holds no file or patient names. A film is
*from the development set* when its bytes or its patient match: another resolution of a training
film, or another film of a training patient, is no held-out evidence either.

Importable without torch (the lakehouse pipeline uses it).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

FILE_NAME = "development_films.sha256"
PREFIX_DIGITS = 16


def _key(kind: str, text: str) -> str:
    return f"{kind}:{hashlib.sha256(text.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}"


def patient_key(category: str | None, filename: str) -> str:
    """``p:<prefix>`` of ``"<CATEGORY>/<patient id>"`` (patient id as in the training split)."""
    from cxrlake.training.data import patient_id

    return _key("p", f"{(category or '-').upper()}/{patient_id(filename)}")


def content_key(content_sha256: str) -> str:
    """``c:<prefix>`` of a file's hex sha256."""
    return f"c:{content_sha256[:PREFIX_DIGITS]}"


def write_development_films(records: Iterable, path: str | os.PathLike[str]) -> int:
    """Write the key list of ``records`` (``LabelledImage``s) to ``path``; returns its length."""
    from cxrlake.training.data import LABELS

    keys = set()
    for record in records:
        with open(record.path, "rb") as handle:
            keys.add(content_key(hashlib.sha256(handle.read()).hexdigest()))
        keys.add(patient_key(LABELS[record.label], Path(record.path).name))
    header = (
        "# Films the shipped model was developed on (training and validation):\n"
        "# c:<sha256 prefix> of the bytes, p:<sha256 prefix> of CATEGORY/patient id.\n"
        "# See cxrlake.training.provenance.\n"
    )
    Path(path).write_text(header + "\n".join(sorted(keys)) + "\n")
    return len(keys)


@functools.lru_cache(maxsize=4)
def development_keys(model_path: str | None = None) -> frozenset[str]:
    """The keys listed next to ``model_path`` (default: the shipped model); empty if no list."""
    if model_path is None:
        import cxrlake

        model_path = cxrlake.default_model_path()
    path = Path(model_path).with_name(FILE_NAME)
    if not path.is_file():
        return frozenset()
    lines = path.read_text().splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#"))


def seen_in_development(
    categories: Sequence[str | None],
    filenames: Sequence[str],
    content_sha256s: Sequence[str | None],
    model_path: str | None = None,
) -> list[bool]:
    """Per film: whether its bytes or its patient belong to the model's development set."""
    keys = development_keys(model_path)
    if not keys:
        return [False] * len(filenames)
    return [
        (sha is not None and content_key(sha) in keys) or patient_key(cat, name) in keys
        for cat, name, sha in zip(categories, filenames, content_sha256s, strict=True)
    ]


def development_share(rows, model_path: str | None = None) -> dict[str, tuple[int, int]]:
    """Per ``dataset_split``: (films from the development set, films), from an Arrow table with
    ``dataset_split``, ``label_name`` (or ``category``), ``filename`` and ``content_sha256``."""
    names = rows.column_names
    category = rows.column("label_name" if "label_name" in names else "category").to_pylist()
    seen = seen_in_development(
        category,
        rows.column("filename").to_pylist(),
        rows.column("content_sha256").to_pylist(),
        model_path,
    )
    share: dict[str, tuple[int, int]] = {}
    for split, dev in zip(rows.column("dataset_split").to_pylist(), seen, strict=True):
        n_dev, n = share.get(split, (0, 0))
        share[split] = (n_dev + int(dev), n + 1)
    return share


def evaluation_caveat(share: dict[str, tuple[int, int]], split: str) -> str:
    """``""`` for a split of unseen films, else a note that its figures are no evaluation."""
    n_dev, n = share.get(split, (0, 0))
    if n_dev == 0:
        return ""
    if n_dev == n:
        return "training-set figures (every film is from the model's development set)"
    return f"{n_dev} of {n} films are from the model's development set: not an evaluation"
