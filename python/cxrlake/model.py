"""The pneumonia model: locating ONNX Runtime, the shipped model file, and its metadata."""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from pathlib import Path
from typing import TypedDict

from cxrlake import _internal
from cxrlake.exceptions import InvalidArgumentError, ModelError, RuntimeLibraryError

__all__ = ["Model", "default_model_path", "onnxruntime_library_path", "resolve_model_path"]

MODEL_FILE_NAME = "cxrlake_pneumonia.onnx"

LABEL_NAMES: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
"""Class names of the model contract (``cxrlake.labels``); the index is the integer label."""

_runtime_lock = threading.Lock()
_runtime_ready = False


def default_model_path() -> str:
    """Path of the model shipped inside the wheel (``cxrlake/models/cxrlake_pneumonia.onnx``)."""
    return str(Path(__file__).resolve().parent / "models" / MODEL_FILE_NAME)


def onnxruntime_library_path() -> str:
    """Path of the ONNX Runtime shared library cxrlake loads.

    Env ``ORT_DYLIB_PATH`` wins; otherwise the library shipped in the ``onnxruntime`` PyPI package
    (``onnxruntime/capi/libonnxruntime.so.1.*`` on Linux), found without importing the package.
    """
    override = os.environ.get("ORT_DYLIB_PATH")
    if override:
        return override
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeLibraryError(
            "the onnxruntime Python package is not installed (pip install onnxruntime); "
            "or set ORT_DYLIB_PATH to libonnxruntime"
        )
    patterns = (
        "libonnxruntime.so.*",
        "libonnxruntime.so",
        "libonnxruntime.*.dylib",
        "libonnxruntime.dylib",
        "onnxruntime.dll",
    )
    for location in spec.submodule_search_locations:
        capi = Path(location) / "capi"
        for pattern in patterns:
            found = sorted(p for p in capi.glob(pattern) if p.is_file())
            if found:
                return str(found[-1])
    raise RuntimeLibraryError(
        f"no ONNX Runtime library in {list(spec.submodule_search_locations)}/capi; "
        "set ORT_DYLIB_PATH to libonnxruntime"
    )


def ensure_runtime() -> None:
    """Loads ONNX Runtime into the process once (later calls are free)."""
    global _runtime_ready
    if _runtime_ready:
        return
    with _runtime_lock:
        if not _runtime_ready:
            _internal.init_runtime(onnxruntime_library_path())
            _runtime_ready = True


def resolve_model_path(model: Model | str | os.PathLike[str] | None) -> str:
    """The model file for a ``model=`` argument: a :class:`Model`, a path, or None (default)."""
    if model is None:
        path = default_model_path()
    elif isinstance(model, Model):
        path = model.path
    elif isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
    else:
        raise InvalidArgumentError(
            f"model must be a cxrlake.Model, a path or None, not {type(model).__name__}"
        )
    if not os.path.isfile(path):
        raise ModelError(f"model file not found: {path}")
    ensure_runtime()
    return path


class DriftReference(TypedDict, total=False):
    """The training films' reference a model carries (``cxrlake.drift_reference``, JSON)."""

    probability_bins: list[float]  # shares of 10 equal-width probability bins
    positive_rate: float
    mean_probability: float
    quality_mean: float
    quality_std: float


class Model:
    """An ONNX pneumonia model following the cxrlake model contract (docs/architecture.md).

    ``Model(path=None)`` loads ``path`` (default: :func:`default_model_path`) into an ONNX Runtime
    session cached per process, and reads its metadata:

    - ``path``: absolute path of the model file
    - ``name``, ``version``: ``cxrlake.model_name`` / ``cxrlake.model_version``
    - ``threshold``: predicted label is 1 when probability >= threshold
    - ``input_shape``: ``(C, H, W)`` of one input tensor
    - ``mean``, ``std``: per-channel normalisation, ``x = (pixel / 255 - mean) / std``
    - ``labels``: names of label 0 and 1, e.g. ``("NORMAL", "PNEUMONIA")``
    - ``has_embedding``, ``embedding_dim``: whether the model exposes its penultimate layer
    - ``has_heatmap``: whether the model has a ``heatmap`` output (class-activation map)
    - ``head_bias``: ``cxrlake.head_bias`` (``logit = head_bias + mean(heatmap)``) or None
    - ``ood_threshold``: ``cxrlake.ood_threshold`` when the model has an ``ood_score`` output
      (a film scoring above it is flagged out of distribution), else None

    Raises :class:`~cxrlake.exceptions.ModelError` when the file is missing or invalid.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        resolved = resolve_model_path(path)
        info = _internal.model_info(resolved)
        self.path: str = info["path"]
        self.name: str = info["name"]
        self.version: str = info["version"]
        self.threshold: float = info["threshold"]
        label_0, label_1 = info["labels"]
        self.labels: tuple[str, str] = (label_0, label_1)
        channels, height, width = info["input_shape"]
        self.input_shape: tuple[int, int, int] = (channels, height, width)
        self.mean: tuple[float, ...] = tuple(info["mean"])
        self.std: tuple[float, ...] = tuple(info["std"])
        self.embedding_dim: int | None = info["embedding_dim"]
        self.has_heatmap: bool = bool(info["has_heatmap"])
        self.head_bias: float | None = info["head_bias"]
        self.ood_threshold: float | None = info.get("ood_threshold")
        reference = info.get("drift_reference")
        #: the training films' reference for ``gold.drift_metrics`` (``cxrlake.drift_reference``):
        #: ``probability_bins`` (shares of 10 equal-width bins), ``positive_rate``,
        #: ``mean_probability``, ``quality_mean``, ``quality_std``; None when absent
        self.drift_reference: DriftReference | None = None
        try:
            self.drift_reference = json.loads(reference) if reference else None
        except ValueError:
            self.drift_reference = None

    @property
    def has_embedding(self) -> bool:
        """Whether the model has an ``embedding`` output (penultimate layer)."""
        return self.embedding_dim is not None

    @property
    def has_ood_score(self) -> bool:
        """Whether the model has an ``ood_score`` output (``cxrlake.training.ood``)."""
        return self.ood_threshold is not None

    def __repr__(self) -> str:
        return (
            f"Model(name={self.name!r}, version={self.version!r}, threshold={self.threshold}, "
            f"input_shape={self.input_shape}, path={self.path!r})"
        )
