"""Type stub of the compiled module (src/py/). Use the public wrappers in ``cxrlake`` instead."""

from os import PathLike

import numpy as np
import pyarrow as pa

__version__: str

class CxrlakeError(Exception): ...
class InvalidArgumentError(CxrlakeError): ...
class ModelError(CxrlakeError): ...
class RuntimeLibraryError(CxrlakeError): ...
class SandboxError(CxrlakeError): ...

def init_runtime(library: str | PathLike[str] | None = None) -> None: ...
def model_info(path: str | PathLike[str], threads: int | None = None) -> dict[str, object]: ...
def resolve_threads(threads: int | None = None) -> int: ...
def decode(
    images: pa.Array,
    *,
    threads: int | None = None,
    roots: list[str] | None = None,
    max_pixels: int | None = None,
    max_file_bytes: int | None = None,
) -> pa.RecordBatch: ...
def dicom_metadata(
    images: pa.Array,
    *,
    threads: int | None = None,
    roots: list[str] | None = None,
    max_pixels: int | None = None,
    max_file_bytes: int | None = None,
) -> pa.RecordBatch: ...
def preprocess(
    images: pa.Array,
    model_path: str | PathLike[str],
    *,
    threads: int | None = None,
    roots: list[str] | None = None,
    max_pixels: int | None = None,
    max_file_bytes: int | None = None,
) -> tuple[np.ndarray, pa.StringArray]: ...
def features(
    images: pa.Array,
    model_path: str | PathLike[str] | None = None,
    *,
    threads: int | None = None,
    roots: list[str] | None = None,
    max_pixels: int | None = None,
    max_file_bytes: int | None = None,
) -> pa.RecordBatch: ...
def predict(
    images: pa.Array,
    model_path: str | PathLike[str],
    *,
    threads: int | None = None,
    roots: list[str] | None = None,
    max_pixels: int | None = None,
    max_file_bytes: int | None = None,
) -> pa.RecordBatch: ...
def analyze(
    images: pa.Array,
    model_path: str | PathLike[str],
    *,
    threads: int | None = None,
    roots: list[str] | None = None,
    max_pixels: int | None = None,
    max_file_bytes: int | None = None,
    heatmap: bool = True,
) -> pa.RecordBatch: ...
def explain(
    images: pa.Array,
    model_path: str | PathLike[str],
    *,
    threads: int | None = None,
    roots: list[str] | None = None,
    max_pixels: int | None = None,
    max_file_bytes: int | None = None,
    overlay_size: int | None = None,
) -> pa.RecordBatch: ...
def overlay_png(
    pixels: bytes,
    width: int,
    height: int,
    rows: int,
    cols: int,
    values: list[float],
    size: int,
) -> bytes: ...
