//! The one place core errors become Python exceptions (re-exported by `cxrlake.exceptions`).

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::PyErr;

use crate::core::CoreError;

create_exception!(
    cxrlake.exceptions,
    CxrlakeError,
    PyException,
    "Base class of every cxrlake error."
);
create_exception!(
    cxrlake.exceptions,
    InvalidArgumentError,
    CxrlakeError,
    "An argument is unusable: wrong Arrow type, bad thread count, bad limit."
);
create_exception!(
    cxrlake.exceptions,
    ModelError,
    CxrlakeError,
    "The model file is missing or does not follow the cxrlake ONNX contract."
);
create_exception!(
    cxrlake.exceptions,
    RuntimeLibraryError,
    CxrlakeError,
    "The ONNX Runtime shared library could not be found or loaded."
);
create_exception!(
    cxrlake.exceptions,
    SandboxError,
    CxrlakeError,
    "The sandbox roots are misconfigured."
);

/// Maps a core error to its Python exception class.
pub fn to_py_err(error: CoreError) -> PyErr {
    let message = error.to_string();
    match error {
        CoreError::InvalidArgument(_) => InvalidArgumentError::new_err(message),
        CoreError::Model(_) => ModelError::new_err(message),
        CoreError::Runtime(_) => RuntimeLibraryError::new_err(message),
        CoreError::Sandbox(_) => SandboxError::new_err(message),
    }
}
