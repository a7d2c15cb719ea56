//! Resource limits applied to every input before any large allocation.

use crate::core::error::{CoreError, RowError, RowResult};

/// Default maximum decoded image size: 100 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;
/// Default maximum encoded size of one image: 64 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Limits that refuse decompression bombs and oversized inputs.
///
/// Both limits are checked from headers and file metadata, before the pixel buffer or the file
/// contents are allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum `width * height` of a decoded image, in pixels.
    pub max_pixels: u64,
    /// Maximum size of one encoded image (file or bytes), in bytes.
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

impl Limits {
    /// Limits from explicit values, falling back to env `CXRLAKE_MAX_PIXELS` /
    /// `CXRLAKE_MAX_FILE_BYTES`, then to the defaults (100 megapixels, 64 MiB).
    pub fn resolve(
        max_pixels: Option<u64>,
        max_file_bytes: Option<u64>,
    ) -> Result<Self, CoreError> {
        let max_pixels = match max_pixels {
            Some(v) => v,
            None => env_u64("CXRLAKE_MAX_PIXELS")?.unwrap_or(DEFAULT_MAX_PIXELS),
        };
        let max_file_bytes = match max_file_bytes {
            Some(v) => v,
            None => env_u64("CXRLAKE_MAX_FILE_BYTES")?.unwrap_or(DEFAULT_MAX_FILE_BYTES),
        };
        if max_pixels == 0 || max_file_bytes == 0 {
            return Err(CoreError::InvalidArgument(
                "max_pixels and max_file_bytes must be positive".into(),
            ));
        }
        Ok(Self {
            max_pixels,
            max_file_bytes,
        })
    }

    /// Refuses an image whose header announces more than `max_pixels` pixels.
    pub fn check_dimensions(&self, width: u64, height: u64) -> RowResult<()> {
        if width == 0 || height == 0 {
            return Err(RowError::new(format!(
                "image has invalid size {width}x{height}"
            )));
        }
        if width.saturating_mul(height) > self.max_pixels {
            return Err(RowError::new(format!(
                "image {width}x{height} exceeds {} megapixel limit",
                format_scaled(self.max_pixels, 1_000_000)
            )));
        }
        Ok(())
    }

    /// Refuses an encoded input larger than `max_file_bytes`; `what` is `file` or `image`.
    pub fn check_encoded_size(&self, bytes: u64, what: &str) -> RowResult<()> {
        if bytes > self.max_file_bytes {
            return Err(RowError::new(format!(
                "{what} exceeds {} MiB limit",
                format_scaled(self.max_file_bytes, 1024 * 1024)
            )));
        }
        Ok(())
    }
}

/// `value / unit` printed without a fraction when it is whole (100, 0.5, 1.25).
fn format_scaled(value: u64, unit: u64) -> String {
    if value.is_multiple_of(unit) {
        (value / unit).to_string()
    } else {
        let text = format!("{:.3}", value as f64 / unit as f64);
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn env_u64(name: &str) -> Result<Option<u64>, CoreError> {
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => text.trim().parse::<u64>().map(Some).map_err(|_| {
            CoreError::InvalidArgument(format!(
                "environment variable {name}={text:?} is not a positive integer"
            ))
        }),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_large_images_and_names_the_limit() {
        let limits = Limits::default();
        assert!(limits.check_dimensions(10_000, 10_000).is_ok());
        let err = limits.check_dimensions(70_000, 70_000).unwrap_err();
        assert_eq!(err.0, "image 70000x70000 exceeds 100 megapixel limit");
        let small = Limits {
            max_pixels: 1_500_000,
            max_file_bytes: 512 * 1024,
        };
        assert_eq!(
            small.check_dimensions(2000, 1000).unwrap_err().0,
            "image 2000x1000 exceeds 1.5 megapixel limit"
        );
        assert_eq!(
            small.check_encoded_size(600_000, "file").unwrap_err().0,
            "file exceeds 0.5 MiB limit"
        );
    }

    #[test]
    fn refuses_zero_sized_images() {
        assert!(Limits::default().check_dimensions(0, 10).is_err());
    }
}
