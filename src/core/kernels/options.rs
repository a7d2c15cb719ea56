//! Settings shared by every kernel call, and the per-row panic guard.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use rayon::ThreadPool;

use crate::core::error::{CoreError, RowError, RowResult};
use crate::core::limits::Limits;
use crate::core::sandbox::Sandbox;
use crate::core::threads::{resolve_threads, thread_pool};

/// Default number of images per ONNX Runtime run.
pub const DEFAULT_INFERENCE_BATCH: usize = 16;

/// Settings shared by every kernel call.
#[derive(Debug, Clone)]
pub struct KernelOptions {
    /// Worker threads for decoding (and intra-op threads of ONNX Runtime).
    pub threads: usize,
    /// Size limits checked before allocation.
    pub limits: Limits,
    /// Where file paths may be read from.
    pub sandbox: Sandbox,
    /// Images per inference run.
    pub inference_batch: usize,
}

impl KernelOptions {
    /// Options from explicit values, falling back to the environment (see [`resolve_threads`],
    /// [`Limits::resolve`], [`Sandbox::resolve`]); `CXRLAKE_INFERENCE_BATCH` sets the batch size.
    pub fn resolve(
        threads: Option<usize>,
        roots: Option<&[String]>,
        max_pixels: Option<u64>,
        max_file_bytes: Option<u64>,
    ) -> Result<Self, CoreError> {
        let inference_batch = match std::env::var("CXRLAKE_INFERENCE_BATCH") {
            Ok(text) if !text.trim().is_empty() => match text.trim().parse::<usize>() {
                Ok(n) if (1..=4096).contains(&n) => n,
                _ => {
                    return Err(CoreError::InvalidArgument(format!(
                        "environment variable CXRLAKE_INFERENCE_BATCH={text:?} must be 1..4096"
                    )))
                }
            },
            _ => DEFAULT_INFERENCE_BATCH,
        };
        Ok(Self {
            threads: resolve_threads(threads)?,
            limits: Limits::resolve(max_pixels, max_file_bytes)?,
            sandbox: Sandbox::resolve(roots)?,
            inference_batch,
        })
    }

    pub(crate) fn pool(&self) -> Result<Arc<ThreadPool>, CoreError> {
        thread_pool(self.threads)
    }
}

impl Default for KernelOptions {
    fn default() -> Self {
        Self {
            threads: resolve_threads(None).unwrap_or(1),
            limits: Limits::default(),
            sandbox: Sandbox::allow_all(),
            inference_batch: DEFAULT_INFERENCE_BATCH,
        }
    }
}

/// Runs `f`, turning a panic into a row error so one bad row cannot abort the batch.
pub(crate) fn guarded<T>(f: impl FnOnce() -> RowResult<T>) -> RowResult<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let detail = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(RowError::new(format!("internal error: {detail}")))
    })
}
