//! Turning a grayscale image into the model's input tensor, as the ONNX model contract specifies.

use crate::core::decode::decode_gray;
use crate::core::error::{CoreError, RowResult};
use crate::core::image::{Acquisition, GrayImage};
use crate::core::limits::Limits;
use crate::core::resize::resize_gray;

/// Input geometry and normalisation of a model, read from its ONNX metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessing {
    /// Input width W, in pixels.
    pub width: u32,
    /// Input height H, in pixels.
    pub height: u32,
    /// Input channels C (the gray image is replicated to every channel).
    pub channels: usize,
    /// Per-channel mean subtracted from `pixel / 255` (length `channels`).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation dividing `pixel / 255 - mean` (length `channels`).
    pub std: Vec<f32>,
}

impl Preprocessing {
    /// Validated preprocessing; `mean`/`std` may hold one value (used for every channel) or one
    /// per channel.
    pub fn new(
        width: u32,
        height: u32,
        channels: usize,
        mean: Vec<f32>,
        std: Vec<f32>,
    ) -> Result<Self, CoreError> {
        if width == 0 || height == 0 || channels == 0 || width > 8192 || height > 8192 {
            return Err(CoreError::Model(format!(
                "invalid model input size {channels}x{height}x{width}"
            )));
        }
        let per_channel = |values: Vec<f32>, name: &str| -> Result<Vec<f32>, CoreError> {
            match values.len() {
                1 => Ok(vec![values[0]; channels]),
                n if n == channels => Ok(values),
                n => Err(CoreError::Model(format!(
                    "model {name} has {n} values for {channels} channels"
                ))),
            }
        };
        let mean = per_channel(mean, "mean")?;
        let std = per_channel(std, "std")?;
        if std.iter().any(|s| !s.is_finite() || *s == 0.0) || mean.iter().any(|m| !m.is_finite()) {
            return Err(CoreError::Model(
                "model mean/std must be finite and std non-zero".into(),
            ));
        }
        Ok(Self {
            width,
            height,
            channels,
            mean,
            std,
        })
    }

    /// Number of f32 values in one image's tensor (`C * H * W`).
    pub fn tensor_len(&self) -> usize {
        self.channels * self.height as usize * self.width as usize
    }

    /// Resizes `image` to the model size (8-bit, before normalisation).
    pub fn resize(&self, image: &GrayImage) -> Vec<u8> {
        resize_gray(image, self.width, self.height)
    }

    /// Writes `x = (pixel / 255 - mean[c]) / std[c]` for each channel into `out` (`[C, H, W]`).
    pub fn normalise_into(&self, resized: &[u8], out: &mut [f32]) {
        let plane = self.height as usize * self.width as usize;
        debug_assert_eq!(resized.len(), plane);
        debug_assert_eq!(out.len(), self.tensor_len());
        for (c, channel) in out.chunks_exact_mut(plane).enumerate() {
            let lut = self.lookup_table(c);
            for (dst, &px) in channel.iter_mut().zip(resized) {
                *dst = lut[px as usize];
            }
        }
    }

    fn lookup_table(&self, channel: usize) -> [f32; 256] {
        let mut lut = [0f32; 256];
        for (value, slot) in lut.iter_mut().enumerate() {
            *slot = (value as f32 / 255.0 - self.mean[channel]) / self.std[channel];
        }
        lut
    }

    /// Decodes (with DCT scaling down to no less than twice the model size), resizes and
    /// normalises one encoded image into `out`. Returns the DICOM acquisition attributes
    /// (`None` for JPEG and PNG).
    pub fn encoded_into(
        &self,
        data: &[u8],
        limits: &Limits,
        out: &mut [f32],
    ) -> RowResult<Option<Acquisition>> {
        let decoded = decode_gray(data, limits, Some((self.width, self.height)))?;
        let resized = self.resize(&decoded.image);
        self.normalise_into(&resized, out);
        Ok(decoded.acquisition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_replicates_channels() {
        let prep = Preprocessing::new(2, 1, 3, vec![0.5], vec![0.5]).unwrap();
        let mut out = vec![0f32; prep.tensor_len()];
        prep.normalise_into(&[0, 255], &mut out);
        assert_eq!(out, vec![-1.0, 1.0, -1.0, 1.0, -1.0, 1.0]);
    }

    #[test]
    fn rejects_mismatched_normalisation() {
        assert!(Preprocessing::new(2, 2, 3, vec![0.1, 0.2], vec![0.5]).is_err());
        assert!(Preprocessing::new(2, 2, 1, vec![0.1], vec![0.0]).is_err());
        assert!(Preprocessing::new(0, 2, 1, vec![0.1], vec![1.0]).is_err());
    }
}
