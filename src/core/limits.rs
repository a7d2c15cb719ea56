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
                "image {width}x{height} exceeds {} limit",
                format_pixels(self.max_pixels)
            )));
        }
        Ok(())
    }

    /// Refuses an encoded input larger than `max_file_bytes`; `what` is `file` or `image`.
    pub fn check_encoded_size(&self, bytes: u64, what: &str) -> RowResult<()> {
        if bytes > self.max_file_bytes {
            return Err(RowError::new(format!(
                "{what} exceeds {} limit",
                format_bytes(self.max_file_bytes)
            )));
        }
        Ok(())
    }
}

/// A pixel count for messages: `100 megapixel`, `1.5 megapixel`, or `5000 pixel` below 0.001 MP.
fn format_pixels(pixels: u64) -> String {
    if pixels < 1_000 {
        format!("{pixels} pixel")
    } else {
        format!("{} megapixel", format_scaled(pixels, 1_000_000))
    }
}

/// A byte count for messages: `10 byte` below 1 KiB, `1.465 KiB` below 1 MiB, else `64 MiB`,
/// `1.5 MiB`: never a figure that rounds to 0.
fn format_bytes(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    if bytes < KIB {
        format!("{bytes} byte")
    } else if bytes < MIB {
        format!("{} KiB", format_scaled(bytes, KIB))
    } else {
        format!("{} MiB", format_scaled(bytes, MIB))
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
        // 0 is refused here too, so the message names the variable that holds it.
        Ok(text) if !text.trim().is_empty() => match text.trim().parse::<u64>() {
            Ok(value) if value > 0 => Ok(Some(value)),
            _ => Err(CoreError::InvalidArgument(format!(
                "environment variable {name}={text:?} is not a positive integer"
            ))),
        },
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
            "file exceeds 512 KiB limit"
        );
    }

    #[test]
    fn tiny_limits_are_never_printed_as_zero() {
        let tiny = Limits {
            max_pixels: 10,
            max_file_bytes: 10,
        };
        assert_eq!(
            tiny.check_encoded_size(11, "file").unwrap_err().0,
            "file exceeds 10 byte limit"
        );
        assert_eq!(
            tiny.check_dimensions(4, 4).unwrap_err().0,
            "image 4x4 exceeds 10 pixel limit"
        );
        let kib = Limits {
            max_pixels: 1_000_000,
            max_file_bytes: 3 * 1024,
        };
        assert_eq!(
            kib.check_encoded_size(4000, "image").unwrap_err().0,
            "image exceeds 3 KiB limit"
        );
        let odd = Limits {
            max_pixels: 1_000_000,
            max_file_bytes: 1500,
        };
        assert_eq!(
            odd.check_encoded_size(4000, "image").unwrap_err().0,
            "image exceeds 1.465 KiB limit"
        );
    }

    #[test]
    fn refuses_zero_sized_images() {
        assert!(Limits::default().check_dimensions(0, 10).is_err());
    }
}
