"""cxrlake: chest X-ray lakehouse.

Rust Arrow kernels for decoding, quality features and ONNX pneumonia scoring, wrapped as plain
Python. Public API (see docs/architecture.md):

- :func:`decode`, :func:`preprocess`, :func:`features`, :func:`predict`, :func:`analyze`,
  :func:`explain`, :func:`render_overlay`, :func:`dicom_metadata`
- :class:`Model`, :func:`default_model_path`
- :mod:`cxrlake.exceptions`
"""

from cxrlake import exceptions
from cxrlake._api import (
    analyze,
    decode,
    dicom_metadata,
    explain,
    features,
    predict,
    preprocess,
    render_overlay,
)
from cxrlake._internal import __version__
from cxrlake.model import Model, default_model_path

__all__ = [
    "Model",
    "__version__",
    "analyze",
    "decode",
    "default_model_path",
    "dicom_metadata",
    "exceptions",
    "explain",
    "features",
    "predict",
    "preprocess",
    "render_overlay",
]
