"""Type stub of the compiled module (src/py/). Use the public wrappers in ``cxrlake`` instead."""

from collections.abc import Sequence
from os import PathLike
from typing import TypedDict, type_check_only

import numpy as np
import numpy.typing as npt
import pyarrow as pa

__all__ = [
    "init_runtime",
    "model_info",
    "decode",
    "dicom_metadata",
    "preprocess",
    "features",
    "predict",
    "analyze",
    "explain",
    "overlay_png",
    "resolve_threads",
    "CxrlakeError",
    "InvalidArgumentError",
    "ModelError",
    "RuntimeLibraryError",
    "SandboxError",
    "__version__",
]

__version__: str

class CxrlakeError(Exception): ...
class InvalidArgumentError(CxrlakeError): ...
class ModelError(CxrlakeError): ...
class RuntimeLibraryError(CxrlakeError): ...
class SandboxError(CxrlakeError): ...

@type_check_only
class ModelInfo(TypedDict):
    """What `model_info` returns: the model's metadata (`cxrlake.Model` reads it)."""

    path: str
    name: str
    version: str
    threshold: float
    labels: tuple[str, str]
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: list[float]
    std: list[float]
    embedding_dim: int | None
    has_heatmap: bool
    head_bias: float | None
    ood_threshold: float | None
    drift_reference: str | None  # JSON text

def init_runtime(library: str | PathLike[str] | None = None) -> None: ...
def model_info(path: str | PathLike[str], threads: int | None = None) -> ModelInfo: ...
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
) -> tuple[npt.NDArray[np.float32], pa.StringArray]: ...  # tensors [N, C, H, W], errors
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
    values: Sequence[float],
    size: int,
) -> bytes: ...
