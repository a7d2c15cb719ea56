//! Antialiased bilinear resizing, numerically the convolution PIL `Image.resize(..., BILINEAR)` uses.

use std::cell::RefCell;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::core::image::GrayImage;

thread_local! {
    // The resizer keeps its coefficient and scratch buffers between calls on the same thread.
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// Resizes `image` to exactly `width x height` pixels (aspect ratio not kept), antialiased
/// bilinear like PIL. Returns the row-major 8-bit pixels.
pub fn resize_gray(image: &GrayImage, width: u32, height: u32) -> Vec<u8> {
    if image.width == width && image.height == height {
        return image.pixels.clone();
    }
    let src = ImageRef::new(image.width, image.height, &image.pixels, PixelType::U8)
        .expect("GrayImage holds width * height pixels");
    let mut dst = Image::new(width, height, PixelType::U8);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    RESIZER.with(|resizer| {
        resizer
            .borrow_mut()
            .resize(&src, &mut dst, &options)
            .expect("U8 to U8 resize of non-empty images cannot fail")
    });
    dst.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_images_stay_uniform() {
        let image = GrayImage {
            width: 40,
            height: 30,
            pixels: vec![77; 1200],
        };
        let out = resize_gray(&image, 7, 5);
        assert_eq!(out, vec![77; 35]);
    }

    #[test]
    fn downscaling_averages_neighbours() {
        // A 2x1 image of black and white becomes one mid-gray pixel.
        let image = GrayImage {
            width: 2,
            height: 1,
            pixels: vec![0, 255],
        };
        let out = resize_gray(&image, 1, 1);
        assert!((127..=128).contains(&out[0]), "{out:?}");
    }
}
