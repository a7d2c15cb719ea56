//! Pixel statistics and the 0–1 `quality_score` of a radiograph.
//!
//! `quality_score` is the geometric mean of four terms, each in 0..=1 (1 = good):
//!
//! * exposure   `e = 1 - |mean - 127.5| / 127.5` on the full-resolution 8-bit pixels:
//!   0 for an all-black or all-white image, 1 for a mid-gray mean;
//! * contrast   `c = min(1, std / 64)`: a standard deviation of 64 gray levels or more is full contrast;
//! * sharpness  `s = v / (v + 100)` where `v` is the variance of the 4-neighbour Laplacian of the
//!   image resized to 256x256 (so the term does not depend on the original resolution);
//!   a blurred image has a small `v`;
//! * clipping   `k = 1 - min(1, f / 0.5)` where `f` is the fraction of full-resolution pixels at
//!   0..=2 or 253..=255: half the image burnt out or black gives 0.
//!
//! `quality_score = (e * c * s * k)^(1/4)`: any single failure (black frame, flat image, heavy
//! blur, saturation) pulls the score towards 0.

use crate::core::image::GrayImage;
use crate::core::resize::resize_gray;

/// Side of the square image the sharpness term is measured on, in pixels.
pub const SHARPNESS_SIZE: u32 = 256;
/// Laplacian variance at which the sharpness term is 0.5.
pub const SHARPNESS_HALF: f64 = 100.0;
/// Standard deviation (gray levels) at which the contrast term saturates at 1.
pub const CONTRAST_FULL: f64 = 64.0;
/// Clipped fraction at which the clipping term reaches 0.
pub const CLIPPED_ZERO: f64 = 0.5;

/// Statistics of an 8-bit grayscale image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageQuality {
    /// Mean pixel value, 0..=255.
    pub mean: f64,
    /// Population standard deviation of the pixel values, in gray levels.
    pub std: f64,
    /// Fraction of pixels at 0..=2 or 253..=255.
    pub clipped_fraction: f64,
    /// Variance of the 4-neighbour Laplacian on the 256x256 resized image.
    pub laplacian_variance: f64,
    /// The combined 0..=1 score (see the module documentation).
    pub score: f64,
}

/// Measures `image` (full resolution) and combines the terms into `quality_score`.
pub fn measure_quality(image: &GrayImage) -> ImageQuality {
    let mut histogram = [0u64; 256];
    for &px in &image.pixels {
        histogram[px as usize] += 1;
    }
    let count = image.pixels.len().max(1) as f64;
    let mut sum = 0f64;
    let mut sum_sq = 0f64;
    for (value, &n) in histogram.iter().enumerate() {
        let v = value as f64;
        sum += v * n as f64;
        sum_sq += v * v * n as f64;
    }
    let mean = sum / count;
    let variance = (sum_sq / count - mean * mean).max(0.0);
    let std = variance.sqrt();
    let clipped: u64 = histogram[..=2].iter().chain(&histogram[253..]).sum();
    let clipped_fraction = clipped as f64 / count;

    let small = resize_gray(image, SHARPNESS_SIZE, SHARPNESS_SIZE);
    let laplacian_variance = laplacian_variance(&small, SHARPNESS_SIZE as usize);

    let exposure = (1.0 - (mean - 127.5).abs() / 127.5).clamp(0.0, 1.0);
    let contrast = (std / CONTRAST_FULL).min(1.0);
    let sharpness = laplacian_variance / (laplacian_variance + SHARPNESS_HALF);
    let clipping = 1.0 - (clipped_fraction / CLIPPED_ZERO).min(1.0);
    let score = (exposure * contrast * sharpness * clipping).powf(0.25);
    ImageQuality {
        mean,
        std,
        clipped_fraction,
        laplacian_variance,
        score,
    }
}

/// Variance of `4 p(x,y) - p(x-1,y) - p(x+1,y) - p(x,y-1) - p(x,y+1)` over interior pixels.
fn laplacian_variance(pixels: &[u8], side: usize) -> f64 {
    if side < 3 {
        return 0.0;
    }
    let mut sum = 0f64;
    let mut sum_sq = 0f64;
    for y in 1..side - 1 {
        for x in 1..side - 1 {
            let at = |xx: usize, yy: usize| pixels[yy * side + xx] as i32;
            let v = 4 * at(x, y) - at(x - 1, y) - at(x + 1, y) - at(x, y - 1) - at(x, y + 1);
            sum += v as f64;
            sum_sq += (v * v) as f64;
        }
    }
    let n = ((side - 2) * (side - 2)) as f64;
    let mean = sum / n;
    (sum_sq / n - mean * mean).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(width: u32, height: u32, f: impl Fn(u32, u32) -> u8) -> GrayImage {
        let pixels = (0..height)
            .flat_map(|y| (0..width).map(move |x| (x, y)))
            .map(|(x, y)| f(x, y))
            .collect();
        GrayImage {
            width,
            height,
            pixels,
        }
    }

    #[test]
    fn black_and_flat_images_score_zero() {
        assert_eq!(measure_quality(&image(64, 64, |_, _| 0)).score, 0.0);
        assert_eq!(measure_quality(&image(64, 64, |_, _| 128)).score, 0.0);
    }

    #[test]
    fn textured_mid_gray_scores_higher_than_its_blurred_copy() {
        let sharp = image(
            512,
            512,
            |x, y| if (x / 8 + y / 8) % 2 == 0 { 70 } else { 190 },
        );
        let blurred = image(512, 512, |x, _| (70 + (x * 120 / 511)) as u8);
        let q_sharp = measure_quality(&sharp);
        let q_blur = measure_quality(&blurred);
        assert!((q_sharp.mean - 130.0).abs() < 1.0, "{q_sharp:?}");
        assert!(q_sharp.score > 0.8, "{q_sharp:?}");
        assert!(q_blur.score < q_sharp.score, "{q_blur:?} vs {q_sharp:?}");
        assert!(q_blur.laplacian_variance < 10.0);
    }

    #[test]
    fn mean_and_std_are_population_statistics() {
        let q = measure_quality(&image(2, 1, |x, _| if x == 0 { 100 } else { 200 }));
        assert_eq!(q.mean, 150.0);
        assert_eq!(q.std, 50.0);
    }
}
