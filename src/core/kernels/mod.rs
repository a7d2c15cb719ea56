//! Batch kernels: a column of images in, one Arrow record batch (or tensor) out.
//!
//! Every kernel maps a bad row to NULL results plus an `error` string and carries on; only invalid
//! arguments and unusable models fail the call. Rows run in parallel on the rayon pool; a panic in
//! one row becomes that row's error. Inference is pipelined ([`schedule`]): while ONNX Runtime
//! scores chunk k on the calling thread, the pool decodes chunk k+1.
//!
//! - [`options`]: the settings every kernel takes (threads, limits, sandbox, batch size);
//! - [`schedule`]: the chunk schedule, the decode/infer pipeline and the one infer-and-scatter
//!   helper every model kernel uses;
//! - kernels: [`decode_batch`], [`preprocess_batch`], [`predict_batch`], [`features_batch`],
//!   [`analyze_batch`] (statistics, embedding, prediction and heatmap from one decode and one
//!   forward pass), [`explain_batch`] (heatmap and overlay PNG, see [`overlay`]) and
//!   [`dicom_metadata_batch`] (DICOM JSON metadata, no pixels).

mod analyze;
pub mod columns;
mod decoding;
mod dicom_metadata;
mod explain;
mod features;
pub mod options;
pub mod overlay;
mod pass;
mod predict;
pub mod schedule;

pub use analyze::{analyze_batch, analyze_schema};
pub use columns::Heatmap;
pub use decoding::{decode_batch, decode_schema};
pub use dicom_metadata::{dicom_metadata_batch, dicom_metadata_schema};
pub use explain::{explain_batch, explain_schema};
pub use features::{features_batch, features_schema};
pub use options::{KernelOptions, DEFAULT_INFERENCE_BATCH};
pub use predict::{predict_batch, predict_schema, preprocess_batch};
pub use schedule::chunk_schedule;
