"""Exceptions raised by cxrlake.

Row-level problems (a corrupt image, a missing file) never raise: they come back as NULL results
plus an ``error`` string. These exceptions are for whole-call failures only.

- :class:`CxrlakeError`: base class of everything below.
- :class:`InvalidArgumentError`: an unusable argument (wrong Arrow type, bad thread count or limit).
- :class:`ModelError`: the model file is missing or does not follow the ONNX model contract.
- :class:`RuntimeLibraryError`: the ONNX Runtime shared library cannot be found or loaded.
- :class:`SandboxError`: the sandbox roots are misconfigured: a root that does not exist, an
  empty root (``''``, ``CXRLAKE_ALLOWED_ROOTS=:``) or an empty list of roots. An empty root is
  never read as "allow every path".
"""

from cxrlake._internal import (
    CxrlakeError,
    InvalidArgumentError,
    ModelError,
    RuntimeLibraryError,
    SandboxError,
)

__all__ = [
    "CxrlakeError",
    "InvalidArgumentError",
    "ModelError",
    "RuntimeLibraryError",
    "SandboxError",
]
