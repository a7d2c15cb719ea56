"""Provenance: which films a model was developed on, so no figure on them passes as an evaluation.

An engine-neutral service (docs/architecture.md, "Layers"): it reads the films through the
catalog port (`cxrlake.catalog.Catalog`) or takes them as Arrow, and imports no engine and no
command line. The local pipeline's run summary, the report and the site calibration use it.

``models/development_films.sha256`` (written by ``cxrlake train`` next to the shipped model,
`cxrlake.training.provenance`) holds, one per line, 16-hex-digit prefixes of sha256 keys of every
film of the training folder (training and validation splits alike): ``c:<prefix>`` of the file's
bytes and ``p:<prefix>`` of ``"<CATEGORY>/<patient id>"``. Names are hashed: the list holds no
file or patient names. A film is *from the development set* when its bytes or its patient match:
another resolution of a training film, or another film of a training patient, is no held-out
evidence either.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from cxrlake.catalog import Catalog
from cxrlake.medallion.schemas import SILVER
from cxrlake.model import default_model_path

FILE_NAME = "development_films.sha256"
PREFIX_DIGITS = 16

_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_"),
    re.compile(r"^((?:NORMAL2-)?IM-\d{4})"),
)

FILM_COLUMNS = ["dataset_split", "label_name", "filename", "content_sha256"]
"""The silver columns `development_share` reads."""

SplitShare = dict[str, tuple[int, int]]
"""Per ``dataset_split``: (films from the development set, films)."""


def patient_id(file_name: str) -> str:
    """Patient id encoded in a Kaggle file name (``personN`` for PNEUMONIA, ``IM-NNNN`` /
    ``NORMAL2-IM-NNNN`` for NORMAL); the bare stem when no known prefix matches."""
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(file_name)
        if match:
            return match.group(1)
    return Path(file_name).stem


def _key(kind: str, text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{kind}:{digest[:PREFIX_DIGITS]}"


def patient_key(category: str | None, filename: str) -> str:
    """``p:<prefix>`` of ``"<CATEGORY>/<patient id>"`` (patient id as in the training split)."""
    return _key("p", f"{(category or '-').upper()}/{patient_id(filename)}")


def content_key(content_sha256: str) -> str:
    """``c:<prefix>`` of a file's hex sha256."""
    return f"c:{content_sha256[:PREFIX_DIGITS]}"


@functools.lru_cache(maxsize=4)
def development_keys(model_path: str | None = None) -> frozenset[str]:
    """The keys listed next to ``model_path`` (default: the shipped model); empty if no list."""
    path = Path(model_path or default_model_path()).with_name(FILE_NAME)
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


def development_share(rows: pa.Table, model_path: str | None = None) -> SplitShare:
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
    share: SplitShare = {}
    for split, dev in zip(rows.column("dataset_split").to_pylist(), seen, strict=True):
        n_dev, n = share.get(split, (0, 0))
        share[split] = (n_dev + int(dev), n + 1)
    return share


def labelled_films(catalog: Catalog) -> pa.Table:
    """`FILM_COLUMNS` of the labelled images in silver (none when silver is absent)."""
    films = catalog.read(SILVER, FILM_COLUMNS)
    return films.filter(pc.is_valid(films.column("label_name")))


def catalog_share(catalog: Catalog, model_path: str | None = None) -> SplitShare:
    """`development_share` of the labelled images in the catalog's silver."""
    return development_share(labelled_films(catalog), model_path)


def evaluation_caveat(share: SplitShare, split: str) -> str:
    """``""`` for a split of unseen films, else a note that its figures are no evaluation."""
    n_dev, n = share.get(split, (0, 0))
    if n_dev == 0:
        return ""
    if n_dev == n:
        return "training-set figures (every film is from the model's development set)"
    return f"{n_dev} of {n} films are from the model's development set: not an evaluation"


__all__ = [
    "FILE_NAME",
    "catalog_share",
    "content_key",
    "development_keys",
    "development_share",
    "evaluation_caveat",
    "labelled_films",
    "patient_id",
    "patient_key",
    "seen_in_development",
]
