"""Identity rules: what a file's path says about the image, and the deterministic row ids.

- ``category``: the name of the file's parent folder when it is ``NORMAL`` or ``PNEUMONIA``
  (case-insensitive, stored upper-case), else NULL (unlabelled).
- ``dataset_split``: the folder that holds the label folder (``chest_xray/train/NORMAL/x.jpeg``
  -> ``train``, ``chest_xray_fullres/NORMAL/x.jpeg`` -> ``chest_xray_fullres``); for an unlabelled
  file, its parent folder. Lower-cased, characters other than ``[a-z0-9_]`` replaced by ``_``.
- ``site``: the folders from the source folder (its own name included) down to the folder that
  holds the split folder (``<source>/site1/train/NORMAL/a.jpeg`` -> ``<source name>/site1``;
  ``chest_xray/train/NORMAL/a.jpeg`` with source ``chest_xray`` -> ``chest_xray``); empty when
  the split folder is the source itself (``chest_xray_fullres/NORMAL/a.jpeg``) or lies above it.
- ``image_id``: first 32 hex digits of sha256 of ``"<site>/<dataset_split>/<category or
  ->/<filename>"`` (identity rule 2), or of ``"<dataset_split>/<category or ->/<filename>"`` when
  the site is empty or the source follows rule 1. Rule 1 (the rule before sites; ``source``
  None) keeps only the last components, so ``site1/train/NORMAL/a.jpeg`` and
  ``site2/train/NORMAL/a.jpeg`` claimed one id. Which sources keep rule 1: `identity_roots`
  (a source whose files bronze already holds under rule-1 ids keeps them; every other source
  follows rule 2), so an existing lakehouse keeps its ids. Both rules depend only on the
  source folder's name and what lies inside it, not on where it is mounted, so the same files
  give the same ids locally and on a UC Volume of the same name; a changed file keeps its
  image_id and gets a new ``content_sha256``. Files can still claim one id (two sources of the
  same name, or ``train-1/...`` and ``train_1/...``): the collision rule in
  `cxrlake.medallion.rules` quarantines such an id, naming both files.

Pure functions of their arguments, so both engines derive the same ids.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import NamedTuple

import pyarrow as pa

from cxrlake.medallion import schemas

_SPLIT_CHARS = re.compile(r"[^a-z0-9_]+")


def utc_now() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.timezone.utc)


def to_utc(value: object) -> dt.datetime | None:
    """A datetime as timezone-aware UTC (naive values are taken as UTC); None stays None."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    raise TypeError(f"expected a datetime, got {type(value).__name__}")


def _path_parts(path: str) -> list[str]:
    """Components of a local path or URI (``file:/``, ``dbfs:/``), split on ``/`` only: on POSIX
    file systems and in URIs a backslash is part of a name (``PNEUMONIA/NORMAL\\x.jpeg`` is a
    PNEUMONIA film named ``NORMAL\\x.jpeg``, not a NORMAL one)."""
    if ":" in path.split("/", 1)[0]:
        path = path.split(":", 1)[1]
    return [p for p in path.split("/") if p and p != "."]


def _normalise_split(name: str) -> str:
    return _SPLIT_CHARS.sub("_", name.lower()).strip("_") or "unknown"


class ImageIdentity(NamedTuple):
    """What a file's path says about it (see module docstring)."""

    image_id: str
    filename: str
    category: str | None
    dataset_split: str


def image_id_for(dataset_split: str, category: str | None, filename: str) -> str:
    """Deterministic image id: 32 hex digits of sha256("<split>/<category or ->/<filename>")."""
    key = f"{dataset_split}/{category or '-'}/{filename}"
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def identify(path: str, source: str | None = None) -> ImageIdentity:
    """Derive image_id, filename, category and dataset_split from a file path or URI.

    ``source``: the source folder the file was listed under (path or URI); the file's site
    within it enters the image id (rule 2). None, or a path outside ``source``: rule 1 (the
    last path components only). See the module docstring.
    """
    parts = _path_parts(path)
    if not parts:
        raise ValueError(f"cannot derive an image id from empty path {path!r}")
    filename = parts[-1]
    parent = parts[-2] if len(parts) >= 2 else ""
    category = parent.upper() if parent.upper() in schemas.LABEL_NAMES else None
    if category is not None:
        split_dir = parts[-3] if len(parts) >= 3 else "unknown"
    else:
        split_dir = parent or "unknown"
    split = _normalise_split(split_dir)
    image_id = image_id_for(split, category, filename)
    if source is not None:
        site = site_of(parts, _path_parts(source), 3 if category is not None else 2)
        if site:
            image_id = image_id_for(f"{site}/{split}", category, filename)
    return ImageIdentity(image_id, filename, category, split)


def site_of(parts: list[str], root: list[str], below_split: int) -> str:
    """The folders from the source folder ``root`` (its name included) down to the parent of
    the split folder, the ``below_split``-th component from the end of ``parts``, joined by
    ``/``; empty when ``parts`` is not under ``root`` or the split folder is ``root`` itself
    or above it."""
    if not root or parts[: len(root)] != root:
        return ""
    return "/".join(parts[len(root) - 1 : len(parts) - below_split])


def _root_for(path: str, roots: list[list[str]]) -> list[str] | None:
    """The longest of ``roots`` (split into components) that contains ``path``."""
    parts = _path_parts(path)
    best = None
    for root in roots:
        if parts[: len(root)] == root and (best is None or len(root) > len(best)):
            best = root
    return best


def identity_roots(sources: list[str], known: pa.Table | None = None) -> list[str]:
    """The sources whose files are identified by rule 2 (the site enters the id).

    ``known``: the (``file_path``, ``image_id``) rows bronze holds. A source keeps rule 1 when
    bronze holds a file under it with a non-empty site whose id is its rule-1 id (a lakehouse
    written before sites existed keeps its ids); every other source, new ones included,
    follows rule 2. Both engines call this with the same rows, so they agree.
    """
    out = []
    paths = known.column("file_path").to_pylist() if known is not None else []
    ids = known.column("image_id").to_pylist() if known is not None else []
    for source in sources:
        root = _path_parts(source)
        legacy = False
        for path, image_id in zip(paths, ids, strict=True):
            if path is None or _path_parts(path)[: len(root)] != root:
                continue
            new = identify(path, source)
            old = identify(path)
            if new.image_id != old.image_id:  # a file with a site: its id tells the rule
                legacy = image_id == old.image_id
                break
        if not legacy:
            out.append(source)
    return out


IDENTITY_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("filename", pa.string()),
        pa.field("category", pa.string()),
        pa.field("dataset_split", pa.string()),
    ]
)


def identify_paths(
    paths: pa.Array | pa.ChunkedArray | list[str], roots: list[str] | tuple[str, ...] = ()
) -> pa.RecordBatch:
    """`identify` over a column of paths: ``image_id``, ``filename``, ``category``,
    ``dataset_split`` (`IDENTITY_SCHEMA`), one row per path. ``roots``: the sources that
    follow rule 2 (`identity_roots`); a path is identified against the longest root that
    holds it, by rule 1 when none does."""
    values = paths.to_pylist() if hasattr(paths, "to_pylist") else list(paths)
    split_roots = [_path_parts(r) for r in roots]
    ids = []
    for p in values:
        root = _root_for(p, split_roots) if split_roots else None
        ids.append(identify(p, "/" + "/".join(root) if root is not None else None))
    return pa.RecordBatch.from_arrays(
        [pa.array([i[k] for i in ids], pa.string()) for k in range(4)], schema=IDENTITY_SCHEMA
    )


def label_of(category: str | None) -> int | None:
    """Integer label of a category name (0 = NORMAL, 1 = PNEUMONIA), None when unlabelled."""
    return schemas.LABEL_NAMES.index(category) if category in schemas.LABEL_NAMES else None


def sha256_hex(content: bytes) -> str:
    """Hex sha256 of some bytes (the bronze ``content_sha256``)."""
    return hashlib.sha256(content).hexdigest()


def sha256_column(contents: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`sha256_hex` of every value of a binary column (NULL stays NULL), read in place from the
    Arrow buffers: no value is copied into a Python ``bytes`` first."""
    if isinstance(contents, pa.ChunkedArray):
        chunks = [sha256_column(c) for c in contents.chunks]
        return pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())
    if pa.types.is_large_binary(contents.type) or pa.types.is_binary_view(contents.type):
        contents = contents.cast(pa.binary())
    validity, offsets, data = contents.buffers()[:3]
    n, start = len(contents), contents.offset
    ends = memoryview(offsets).cast("i")[start : start + n + 1] if offsets is not None else []
    values = memoryview(data) if data is not None else memoryview(b"")
    valid = contents.is_valid()
    return pa.array(
        [
            hashlib.sha256(values[ends[i] : ends[i + 1]]).hexdigest() if ok else None
            for i, ok in enumerate(valid.to_pylist())
        ],
        pa.string(),
    )


def prediction_id(image_id: str, model_name: str, model_version: str, content_sha256: str) -> str:
    """Deterministic prediction id: 32 hex digits of sha256 over its four inputs.

    Re-scoring the same bytes with the same model gives the same id, so re-runs never duplicate.
    """
    key = "\x1f".join((image_id, model_name, model_version, content_sha256 or ""))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def printable(text: str) -> str:
    """``text`` with control characters (newlines, escape sequences, ...) and undecodable bytes
    shown as escapes, so a file name cannot forge lines in a log or summary."""
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


# C0/C1 controls, DEL, Unicode line/paragraph separators, and lone surrogates (undecodable bytes
# of a file name under Python's surrogateescape)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
