//! pyo3 bindings: a thin layer over [`crate::core`] (feature `python`).

pub mod error;
pub mod functions;

use pyo3::prelude::*;

/// Adds the functions and exception classes to `cxrlake._internal`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(functions::init_runtime, m)?)?;
    m.add_function(wrap_pyfunction!(functions::model_info, m)?)?;
    m.add_function(wrap_pyfunction!(functions::decode, m)?)?;
    m.add_function(wrap_pyfunction!(functions::dicom_metadata, m)?)?;
    m.add_function(wrap_pyfunction!(functions::preprocess, m)?)?;
    m.add_function(wrap_pyfunction!(functions::features, m)?)?;
    m.add_function(wrap_pyfunction!(functions::predict, m)?)?;
    m.add_function(wrap_pyfunction!(functions::analyze, m)?)?;
    m.add_function(wrap_pyfunction!(functions::explain, m)?)?;
    m.add_function(wrap_pyfunction!(functions::overlay_png, m)?)?;
    m.add_function(wrap_pyfunction!(functions::resolve_threads, m)?)?;
    m.add("CxrlakeError", py.get_type::<error::CxrlakeError>())?;
    m.add(
        "InvalidArgumentError",
        py.get_type::<error::InvalidArgumentError>(),
    )?;
    m.add("ModelError", py.get_type::<error::ModelError>())?;
    m.add(
        "RuntimeLibraryError",
        py.get_type::<error::RuntimeLibraryError>(),
    )?;
    m.add("SandboxError", py.get_type::<error::SandboxError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
