"""Identity rules: what a file's path says about the image, and the deterministic row ids.

- ``category``: the name of the file's parent folder when it is ``NORMAL`` or ``PNEUMONIA``
  (case-insensitive, stored upper-case), else NULL (unlabelled).
- ``dataset_split``: the folder that holds the label folder (``chest_xray/train/NORMAL/x.jpeg``
  -> ``train``, ``chest_xray_fullres/NORMAL/x.jpeg`` -> ``chest_xray_fullres``); for an unlabelled
  file, its parent folder. Lower-cased, characters other than ``[a-z0-9_]`` replaced by ``_``.
- ``image_id``: first 32 hex digits of sha256 of ``"<dataset_split>/<category or ->/<filename>"``.
  It depends only on the last path components, not on where the folder is mounted, so the same
  files give the same ids locally and on a UC Volume; a changed file keeps its image_id and gets a
  new ``content_sha256``. Two files can therefore claim one id (``site1/train/NORMAL/a.jpeg`` and
  ``site2/train/NORMAL/a.jpeg``, or ``train-1/...`` and ``train_1/...``): the collision rule in
  `cxrlake.medallion.rules` quarantines such an id, naming both files.

Pure functions of their arguments, so both engines derive the same ids.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Any, NamedTuple

import pyarrow as pa

from cxrlake.medallion import schemas

_SPLIT_CHARS = re.compile(r"[^a-z0-9_]+")


def utc_now() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.timezone.utc)


def to_utc(value: Any) -> dt.datetime | None:
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


def identify(path: str) -> ImageIdentity:
    """Derive image_id, filename, category and dataset_split from a file path or URI."""
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
    return ImageIdentity(image_id_for(split, category, filename), filename, category, split)


IDENTITY_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("filename", pa.string()),
        pa.field("category", pa.string()),
        pa.field("dataset_split", pa.string()),
    ]
)


def identify_paths(paths: pa.Array | pa.ChunkedArray | list[str]) -> pa.RecordBatch:
    """`identify` over a column of paths: ``image_id``, ``filename``, ``category``,
    ``dataset_split`` (`IDENTITY_SCHEMA`), one row per path."""
    values = paths.to_pylist() if hasattr(paths, "to_pylist") else list(paths)
    ids = [identify(p) for p in values]
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
