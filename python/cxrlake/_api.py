"""The public kernels: decode, preprocess, features, predict, analyze, explain (Arrow in/out).

``images`` is a ``pyarrow.Array`` / ``ChunkedArray`` of binary (image bytes) or string (file
paths) in any layout (plain, large, view), or a Python sequence of ``str`` / ``os.PathLike`` /
``bytes``. A bad row never raises: it yields NULL results and an ``error`` string.

Keyword arguments shared by every function:

- ``threads``: worker threads (default: env ``CXRLAKE_NUM_THREADS``, else ``RAYON_NUM_THREADS``,
  else the CPU count).
- ``roots``: directories file paths may be read from (default: env ``CXRLAKE_ALLOWED_ROOTS``,
  ``os.pathsep``-separated; neither set = any path).
- ``max_pixels``: refuse images above this many pixels, from the header (default: env
  ``CXRLAKE_MAX_PIXELS`` else 100 megapixels).
- ``max_file_bytes``: refuse encoded images above this size (default: env
  ``CXRLAKE_MAX_FILE_BYTES`` else 64 MiB).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TypeAlias, TypedDict

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from cxrlake import _internal
from cxrlake.columns import Heatmap
from cxrlake.exceptions import InvalidArgumentError
from cxrlake.model import Model, resolve_model_path
from cxrlake.threshold import SiteThreshold, apply_threshold, resolve_threshold

__all__ = [
    "analyze",
    "decode",
    "dicom_metadata",
    "explain",
    "features",
    "predict",
    "preprocess",
    "render_overlay",
]

ImagesLike: TypeAlias = pa.Array | pa.ChunkedArray | Sequence[str | bytes | os.PathLike[str] | None]
ModelLike: TypeAlias = Model | str | os.PathLike[str] | None

_BYTES_TYPES = (pa.binary(), pa.large_binary(), pa.binary_view())
_PATH_TYPES = (pa.string(), pa.large_string(), pa.string_view())


class _KernelOptions(TypedDict):
    """The keyword arguments every kernel of `cxrlake._internal` takes."""

    threads: int | None
    roots: list[str] | None
    max_pixels: int | None
    max_file_bytes: int | None


def _prepare(images: object) -> tuple[pa.Array, dict[int, str]]:
    """A single pyarrow array of image bytes or paths from any accepted ``images`` value, and the
    rows that carry an error decided here (file names that are not UTF-8), by index."""
    if isinstance(images, pa.ChunkedArray):
        if images.type not in _BYTES_TYPES + _PATH_TYPES:
            raise InvalidArgumentError(_type_message(images.type))
        if images.num_chunks == 1:
            return images.chunk(0), {}
        return (images.combine_chunks() if images.num_chunks else pa.array([], images.type)), {}
    if isinstance(images, pa.Array):
        if images.type not in _BYTES_TYPES + _PATH_TYPES:
            raise InvalidArgumentError(_type_message(images.type))
        return images, {}
    if isinstance(images, (str, bytes, bytearray, os.PathLike)):
        raise InvalidArgumentError(
            "images must be a sequence or Arrow array; wrap a single image in a list"
        )
    if not isinstance(images, Iterable):
        raise InvalidArgumentError(
            f"images must be a pyarrow array or a sequence of paths/bytes, "
            f"not {type(images).__name__}"
        )
    values = list(images)
    kinds = set()
    converted: list[str | bytes | None] = []
    for value in values:
        if value is None:
            converted.append(None)
        elif isinstance(value, (str, os.PathLike)):
            kinds.add("path")
            converted.append(os.fspath(value))
            if isinstance(converted[-1], bytes):  # os.PathLike over bytes
                converted[-1] = os.fsdecode(converted[-1])
        elif isinstance(value, (bytes, bytearray, memoryview)):
            kinds.add("bytes")
            converted.append(bytes(value))
        else:
            raise InvalidArgumentError(
                f"images must hold paths (str, os.PathLike) or bytes, not {type(value).__name__}"
            )
    if len(kinds) > 1:
        raise InvalidArgumentError("images mixes paths and bytes; pass one kind per call")
    arrow_type = pa.binary() if kinds == {"bytes"} else pa.string()
    unnamable: dict[int, str] = {}
    if kinds == {"path"}:
        for i, value in enumerate(converted):
            if isinstance(value, str) and not _utf8_encodable(value):
                # A file name that is not UTF-8 (os.fsdecode's surrogates) cannot be an Arrow
                # string: that row gets NULL and says why; the others are scored as usual.
                unnamable[i] = f"file name is not valid UTF-8: {_printable_path(value)}"
                converted[i] = None
    return pa.array(converted, type=arrow_type), unnamable


def _utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable_path(path: str) -> str:
    """``path`` with undecodable bytes shown as backslash-x escapes (as ``ls -b`` shows them)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _with_row_errors(batch: pa.RecordBatch, rows: dict[int, str]) -> pa.RecordBatch:
    """``batch`` with ``rows``' messages in its ``error`` column."""
    if not rows:
        return batch
    index = batch.schema.get_field_index("error")
    column = _with_messages(batch.column(index), rows)
    return batch.set_column(index, batch.schema.field(index), column)


def _with_messages(errors: pa.Array, rows: dict[int, str]) -> pa.Array:
    """The string array ``errors`` with ``rows``' messages set, by index."""
    values = errors.to_pylist()
    for i, message in rows.items():
        values[i] = message
    return pa.array(values, type=errors.type)


def _type_message(arrow_type: pa.DataType) -> str:
    return (
        "images must be binary/large_binary/binary_view (image bytes) or "
        f"string/large_string/string_view (file paths), got {arrow_type}"
    )


def _options(
    threads: int | None,
    roots: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
    max_pixels: int | None,
    max_file_bytes: int | None,
) -> _KernelOptions:
    for name, value in (
        ("threads", threads),
        ("max_pixels", max_pixels),
        ("max_file_bytes", max_file_bytes),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise InvalidArgumentError(f"{name} must be a positive integer or None, got {value!r}")
        if value is not None and value >= 2**64:
            # The core takes 64-bit counts: refuse here rather than let pyo3 raise OverflowError.
            raise InvalidArgumentError(f"{name} must be below 2**64, got {value}")
    if roots is None:
        root_list = None
    elif isinstance(roots, (str, os.PathLike)):
        root_list = [os.fspath(roots)]
    else:
        root_list = [os.fspath(r) for r in roots]
    return {
        "threads": threads,
        "roots": root_list,
        "max_pixels": max_pixels,
        "max_file_bytes": max_file_bytes,
    }


def decode(
    images: ImagesLike,
    threads: int | None = None,
    *,
    roots: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    max_pixels: int | None = None,
    max_file_bytes: int | None = None,
) -> pa.RecordBatch:
    """Decodes JPEG/PNG images to upright 8-bit grayscale at full resolution.

    Returns a RecordBatch with one row per image: ``width int32``, ``height int32`` (pixels),
    ``pixels binary`` (row-major, ``width * height`` bytes) and ``error string``.
    """
    array, unnamable = _prepare(images)
    return _with_row_errors(
        _internal.decode(array, **_options(threads, roots, max_pixels, max_file_bytes)), unnamable
    )


def dicom_metadata(
    images: ImagesLike,
    threads: int | None = None,
    *,
    roots: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    max_file_bytes: int | None = None,
) -> pa.RecordBatch:
    """The metadata of DICOM files as DICOM JSON (PS3.18 F.2) text, without bulk data.

    Returns a RecordBatch with one row per image: ``metadata string`` (a JSON object keyed by
    ``GGGGEEEE`` tags, file meta group included; pixel data and binary values over 256 bytes
    left out; at most 1 MiB) and ``error string``. Rows that are not DICOM (JPEG, PNG) get NULL
    in both columns; for bytes that costs a look at four bytes. The metadata holds whatever
    the file holds, protected health information included: de-identify it
    (`cxrlake.deid.deidentify`) before it leaves bronze.
    """
    array, unnamable = _prepare(images)
    return _with_row_errors(
        _internal.dicom_metadata(array, **_options(threads, roots, None, max_file_bytes)),
        unnamable,
    )


def preprocess(
    images: ImagesLike,
    model: ModelLike = None,
    threads: int | None = None,
    *,
    roots: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    max_pixels: int | None = None,
    max_file_bytes: int | None = None,
) -> tuple[npt.NDArray[np.float32], pa.StringArray]:
    """The model's input tensors, exactly as :func:`predict` feeds them to the model.

    Returns a float32 array ``[N, C, H, W]`` (rows with errors are all zeros) and a string array
    of per-row errors (null when fine). Size and normalisation come from the model's metadata.
    """
    array, unnamable = _prepare(images)
    path = resolve_model_path(model)
    tensors, errors = _internal.preprocess(
        array, path, **_options(threads, roots, max_pixels, max_file_bytes)
    )
    return tensors, _with_messages(errors, unnamable) if unnamable else errors


def features(
    images: ImagesLike,
    model: ModelLike = None,
    threads: int | None = None,
    embedding: bool = True,
    *,
    roots: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    max_pixels: int | None = None,
    max_file_bytes: int | None = None,
) -> pa.RecordBatch:
    """Per-image features.

    Columns: ``width int32``, ``height int32`` (full resolution, upright, pixels),
    ``mean_pixel_value double``, ``std_pixel_value double`` (over the 8-bit grayscale pixels,
    0..255), ``quality_score double`` (0..1: exposure, contrast, sharpness, clipping; see
    docs/architecture.md), ``embedding list<double>`` (the model's penultimate layer; null when
    ``embedding=False`` or the model has none) and ``error string``.
    With ``embedding=False`` no model is loaded.
    """
    array, unnamable = _prepare(images)
    path = resolve_model_path(model) if embedding else None
    return _with_row_errors(
        _internal.features(array, path, **_options(threads, roots, max_pixels, max_file_bytes)),
        unnamable,
    )


def predict(
    images: ImagesLike,
    model: ModelLike = None,
    threads: int | None = None,
    *,
    roots: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    max_pixels: int | None = None,
    max_file_bytes: int | None = None,
    threshold: float | SiteThreshold | None = None,
) -> pa.RecordBatch:
    """Scores images for pneumonia.

    Columns: ``probability double`` (P(PNEUMONIA), 0..1), ``predicted_label int32`` (1 when
    probability >= the model's threshold), ``label_name string`` (e.g. NORMAL/PNEUMONIA),
    ``model_name string``, ``model_version string`` (filled on every row), the
    out-of-distribution flag ``ood_score double`` (higher = less like the training films; NULL
    when the model has no ``ood_score`` output), ``out_of_distribution bool`` (score above the
    model's ``cxrlake.ood_threshold``, or a DICOM Modality other than CR/DX or a lateral
    ViewPosition), ``ood_reason string`` (why, NULL when not flagged), and ``error string``.
    A flagged image is still scored. Decoding of the next chunk of images overlaps inference of
    the current one.

    ``threshold``: a probability, or a site's stored threshold
    (`cxrlake.lakehouse.site_thresholds.site_threshold`, a `cxrlake.threshold.SiteThreshold`),
    used instead of the model's; the batch then also has
    ``threshold double`` and ``threshold_source string`` (``argument`` or ``site:<id>:v<n>``).
    """
    array, unnamable = _prepare(images)
    path = resolve_model_path(model)
    if threshold is not None:
        decision = resolve_threshold(threshold)  # a bad threshold fails before any decoding
    batch = _with_row_errors(
        _internal.predict(array, path, **_options(threads, roots, max_pixels, max_file_bytes)),
        unnamable,
    )
    return batch if threshold is None else apply_threshold(batch, decision)


def analyze(
    images: ImagesLike,
    model: ModelLike = None,
    threads: int | None = None,
    *,
    roots: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    max_pixels: int | None = None,
    max_file_bytes: int | None = None,
    heatmap: bool = True,
) -> pa.RecordBatch:
    """Everything the lakehouse stores about an image, from one decode and one forward pass.

    Columns: ``width int32``, ``height int32`` (full resolution, upright), ``mean_pixel_value
    double``, ``std_pixel_value double``, ``quality_score double``, ``embedding list<double>``,
    ``probability double``, ``predicted_label int32``, ``label_name string``, ``model_name
    string``, ``model_version string``, ``ood_score double``, ``out_of_distribution bool``,
    ``ood_reason string`` (as in :func:`predict`), ``heatmap struct<rows int32, cols int32,
    values list<float32>>`` and ``error string``.

    Each image is decoded once, as :func:`predict` decodes it (JPEGs DCT-scaled to no less than
    twice the model input), so ``probability`` equals :func:`predict`'s and the embedding comes
    from the same forward pass. The statistics are measured on that decoded image (see
    docs/architecture.md for how far they are from :func:`features`' full-resolution ones).
    ``heatmap`` is the model's class-activation map (``head_bias + mean(values) = logit``),
    row-major from the top-left of the upright image; NULL when the model has no ``heatmap``
    output or ``heatmap=False``.
    """
    array, unnamable = _prepare(images)
    path = resolve_model_path(model)
    result = _internal.analyze(
        array,
        path,
        heatmap=bool(heatmap),
        **_options(threads, roots, max_pixels, max_file_bytes),
    )
    return _with_row_errors(result, unnamable)


def explain(
    images: ImagesLike,
    model: ModelLike = None,
    threads: int | None = None,
    *,
    roots: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    max_pixels: int | None = None,
    max_file_bytes: int | None = None,
    overlay_size: int | None = None,
) -> pa.RecordBatch:
    """Where the model looked: the class-activation map of each image, and optionally an overlay.

    Columns: ``heatmap struct<rows int32, cols int32, values list<float32>>`` (row-major from the
    top-left of the upright image, each value a cell's contribution to the logit, so
    ``head_bias + mean(values) = logit``), ``heatmap_scale double`` (largest ``|value|``: the ends
    of the overlay's colour scale), ``probability double``, ``predicted_label int32``, ``overlay
    binary`` (PNG when ``overlay_size`` is given, else NULL), ``model_name string``,
    ``model_version string``, ``ood_score double``,
    ``out_of_distribution bool``, ``ood_reason string``, ``error string``.

    ``overlay_size`` (16..4096): the overlay shows the upright image with its longer side that many
    pixels, the map upsampled over it (red: towards label 1, blue: towards label 0, stronger where
    ``|value|`` is larger) and the colour scale at its right. Raises
    :class:`~cxrlake.exceptions.ModelError` when the model has no ``heatmap`` output.
    """
    if overlay_size is not None and (
        isinstance(overlay_size, bool) or not isinstance(overlay_size, int) or overlay_size < 1
    ):
        raise InvalidArgumentError(
            f"overlay_size must be a positive integer or None, got {overlay_size!r}"
        )
    array, unnamable = _prepare(images)
    path = resolve_model_path(model)
    result = _internal.explain(
        array,
        path,
        overlay_size=overlay_size,
        **_options(threads, roots, max_pixels, max_file_bytes),
    )
    return _with_row_errors(result, unnamable)


def render_overlay(
    image: str | bytes | os.PathLike[str],
    heatmap: Heatmap,
    size: int = 256,
    *,
    roots: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    max_pixels: int | None = None,
    max_file_bytes: int | None = None,
) -> bytes:
    """The overlay PNG of one image and a stored map (e.g. ``gold.pneumonia_predictions.heatmap``).

    ``heatmap``: ``{"rows": R, "cols": C, "values": [...]}`` as :func:`analyze` and
    :func:`explain` return it; the picture is drawn exactly as :func:`explain` draws its overlays
    (longer side ``size`` pixels, 16..4096). Raises :class:`InvalidArgumentError` when the image
    cannot be decoded (naming why) or the map does not match its shape.
    """
    if isinstance(size, bool) or not isinstance(size, int):
        raise InvalidArgumentError(f"size must be an integer, got {size!r}")
    try:
        rows, cols, values = int(heatmap["rows"]), int(heatmap["cols"]), list(heatmap["values"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgumentError(
            f"heatmap must be a mapping with rows, cols and values, got {heatmap!r:.80}"
        ) from exc
    decoded = decode([image], roots=roots, max_pixels=max_pixels, max_file_bytes=max_file_bytes)
    row = decoded.to_pylist()[0]
    if row["error"] is not None:
        raise InvalidArgumentError(f"cannot draw an overlay: {row['error']}")
    return _internal.overlay_png(
        row["pixels"], row["width"], row["height"], rows, cols, values, size
    )
