"""cxrlake: chest X-ray lakehouse.

Rust Arrow kernels for decoding, quality features and ONNX pneumonia scoring, wrapped as plain
Python. Public API (see docs/architecture.md):

- :func:`decode`, :func:`preprocess`, :func:`features`, :func:`predict`
- :class:`Model`, :func:`default_model_path`
- :mod:`cxrlake.exceptions`
"""

from cxrlake import exceptions
from cxrlake._api import decode, features, predict, preprocess
from cxrlake._internal import __version__
from cxrlake.model import Model, default_model_path

__all__ = [
    "Model",
    "__version__",
    "decode",
    "default_model_path",
    "exceptions",
    "features",
    "predict",
    "preprocess",
]
