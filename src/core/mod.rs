//! The cxrlake core: plain Rust, no Python. Decoding, preprocessing, quality features, model
//! sessions, the path sandbox, limits and the Arrow batch kernels built from them.

pub mod decode;
pub mod dicom;
pub mod dicom_json;
pub mod error;
pub mod exif;
pub mod failpoint;
pub mod image;
pub mod input;
pub mod jpeg;
pub mod kernels;
pub mod limits;
pub mod model;
pub mod ood;
pub mod preprocess;
pub mod quality;
pub mod resize;
pub mod sandbox;
pub mod threads;

pub use decode::decode_gray;
pub use error::{CoreError, RowError, RowResult};
pub use image::{Acquisition, Decoded, GrayImage};
pub use input::{ImageColumn, ImageRef};
pub use kernels::{
    analyze_batch, decode_batch, dicom_metadata_batch, explain_batch, features_batch,
    predict_batch, preprocess_batch, KernelOptions,
};
pub use limits::Limits;
pub use model::{init_runtime, ModelInfo, Outputs, PneumoniaModel};
pub use ood::{ood_flag, OodFlag};
pub use preprocess::Preprocessing;
pub use quality::{measure_quality, ImageQuality};
pub use sandbox::Sandbox;
