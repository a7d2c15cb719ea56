//! cxrlake: Arrow batch kernels for chest X-ray decoding, quality features and ONNX scoring.
//!
//! [`core`] is plain Rust (tested and benchmarked with cargo); [`py`] holds the pyo3 bindings,
//! compiled only with the `python` feature into the private module `cxrlake._internal`.

pub mod core;

#[cfg(feature = "python")]
pub mod py;

#[cfg(feature = "python")]
use pyo3::prelude::*;

/// The private extension module wrapped by the `cxrlake` Python package.
#[cfg(feature = "python")]
#[pymodule]
fn _internal(m: &Bound<'_, PyModule>) -> PyResult<()> {
    py::register(m)
}
