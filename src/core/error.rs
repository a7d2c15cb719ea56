//! Errors of the core: one enum for call-level failures, one string type for row-level problems.

use std::fmt;

/// A failure of a whole call (bad argument, unusable model, missing runtime).
///
/// Row-level problems (a corrupt image, a missing file) are never a `CoreError`: they come back as
/// a [`RowError`] in the row's `error` column and the batch goes on.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The caller passed something unusable: wrong Arrow type, zero threads, bad limit value.
    #[error("{0}")]
    InvalidArgument(String),
    /// The model file is missing, unreadable, or does not follow the cxrlake ONNX contract.
    #[error("{0}")]
    Model(String),
    /// The ONNX Runtime shared library could not be found or loaded.
    #[error("{0}")]
    Runtime(String),
    /// The sandbox roots are misconfigured (a root that does not exist).
    #[error("{0}")]
    Sandbox(String),
}

/// A short, lowercase-first message naming what is wrong with one input row,
/// e.g. `truncated JPEG` or `file not found: /data/x.jpeg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError(pub String);

impl RowError {
    /// Builds a row error from anything printable.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RowError {}

/// Result of processing one row.
pub type RowResult<T> = Result<T, RowError>;
