//! Overlay pictures: an upright grayscale image with its class-activation map upsampled over it,
//! and a colour scale beside it, encoded as PNG.
//!
//! Colours are diverging and centred on 0: red where a cell pushes the logit towards label 1
//! (PNEUMONIA), blue where it pushes towards label 0. Where `|value| / scale` is below
//! [`DISPLAY_FLOOR`] the picture is left untouched (its own grey levels), above it the opacity
//! rises to [`MAX_ALPHA`] at `|value| = scale`, where `scale` is the largest `|value|` of the image's
//! map: only the regions that drove the score are tinted, not the whole film. The colour scale on
//! the right runs from `-scale` (bottom, blue) through 0 (middle line) to `+scale` (top, red), grey
//! in the band the picture leaves untouched. The review app draws its overlay by the same floor
//! (`cxrlake.heatmap.DISPLAY_FLOOR`).

use crate::core::image::GrayImage;
use crate::core::kernels::columns::Heatmap;
use crate::core::kernels::pass::fit;
use crate::core::resize::resize_gray;

/// Smallest and largest accepted overlay side, in pixels.
pub const OVERLAY_SIDE_RANGE: std::ops::RangeInclusive<u32> = 16..=4096;

const POSITIVE: [f32; 3] = [235.0, 40.0, 25.0];
const NEGATIVE: [f32; 3] = [30.0, 100.0, 240.0];
const MAX_ALPHA: f32 = 0.6;
/// Fraction of the map's scale below which the overlay is fully transparent.
pub const DISPLAY_FLOOR: f32 = 0.4;

/// The largest `|value|` of a map (0 for an empty or all-zero map; non-finite values ignored).
pub fn heatmap_scale(heatmap: &Heatmap) -> f32 {
    heatmap
        .values
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f32, |m, v| m.max(v.abs()))
}

/// The map sampled at pixel `(x, y)` of a `width x height` picture, bilinear between cell centres
/// (the grid covers the whole picture: the model sees the whole image stretched to its input).
pub fn sample(heatmap: &Heatmap, width: u32, height: u32, x: u32, y: u32) -> f32 {
    let coord = |p: u32, size: u32, cells: usize| -> (usize, usize, f32) {
        let g =
            ((p as f32 + 0.5) / size as f32 * cells as f32 - 0.5).clamp(0.0, (cells - 1) as f32);
        let lo = g.floor() as usize;
        let hi = (lo + 1).min(cells - 1);
        (lo, hi, g - lo as f32)
    };
    let (x0, x1, fx) = coord(x, width, heatmap.cols);
    let (y0, y1, fy) = coord(y, height, heatmap.rows);
    let at = |r: usize, c: usize| {
        let v = heatmap.values[r * heatmap.cols + c];
        if v.is_finite() {
            v
        } else {
            0.0
        }
    };
    let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
    let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
    top * (1.0 - fy) + bottom * fy
}

fn tint(gray: u8, t: f32) -> [u8; 3] {
    let t = t.clamp(-1.0, 1.0);
    let colour = if t >= 0.0 { POSITIVE } else { NEGATIVE };
    let alpha = MAX_ALPHA * ((t.abs() - DISPLAY_FLOOR) / (1.0 - DISPLAY_FLOOR)).clamp(0.0, 1.0);
    let g = gray as f32;
    let mix = |c: f32| (g * (1.0 - alpha) + c * alpha).round().clamp(0.0, 255.0) as u8;
    [mix(colour[0]), mix(colour[1]), mix(colour[2])]
}

/// RGB pixels (row-major, 3 bytes each) of the overlay and its size: the picture tinted by the
/// map, a black gap, and the colour scale.
pub fn render_rgb(picture: &GrayImage, heatmap: &Heatmap) -> (u32, u32, Vec<u8>) {
    let (pw, ph) = (picture.width, picture.height);
    let side = pw.max(ph);
    let gap = (side / 64).max(2);
    let bar = (side / 16).max(6);
    let width = pw + gap + bar;
    let scale = heatmap_scale(heatmap);
    let mut out = vec![0u8; width as usize * ph as usize * 3];
    for y in 0..ph {
        let row = &mut out[(y * width) as usize * 3..((y + 1) * width) as usize * 3];
        for x in 0..pw {
            let gray = picture.pixels[(y * pw + x) as usize];
            let t = if scale > 0.0 {
                sample(heatmap, pw, ph, x, y) / scale
            } else {
                0.0
            };
            row[x as usize * 3..x as usize * 3 + 3].copy_from_slice(&tint(gray, t));
        }
        // Colour scale: +scale at the top, -scale at the bottom, a white line at 0.
        let t = 1.0 - 2.0 * (y as f32 + 0.5) / ph as f32;
        let middle = y == ph / 2;
        for x in pw + gap..width {
            let px = if middle {
                [255, 255, 255]
            } else {
                tint(128, t)
            };
            row[x as usize * 3..x as usize * 3 + 3].copy_from_slice(&px);
        }
    }
    (width, ph, out)
}

/// The overlay as PNG bytes (8-bit RGB).
pub fn render_png(picture: &GrayImage, heatmap: &Heatmap) -> Result<Vec<u8>, String> {
    let (width, height, rgb) = render_rgb(picture, heatmap);
    let mut png = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder
            .write_header()
            .map_err(|e| format!("cannot encode overlay PNG: {e}"))?;
        writer
            .write_image_data(&rgb)
            .map_err(|e| format!("cannot encode overlay PNG: {e}"))?;
    }
    Ok(png)
}

/// The overlay PNG of an upright `image` and a stored `heatmap`, the image's longer side scaled to
/// `side` pixels (as `explain` draws it). Fails on a map whose values do not match its shape, or
/// a side outside [`OVERLAY_SIDE_RANGE`].
pub fn overlay_png(image: &GrayImage, heatmap: &Heatmap, side: u32) -> Result<Vec<u8>, String> {
    if !OVERLAY_SIDE_RANGE.contains(&side) {
        return Err(format!(
            "overlay size must be {}..={} pixels, got {side}",
            OVERLAY_SIDE_RANGE.start(),
            OVERLAY_SIDE_RANGE.end()
        ));
    }
    if heatmap.rows == 0 || heatmap.cols == 0 || heatmap.values.len() != heatmap.rows * heatmap.cols
    {
        return Err(format!(
            "heatmap of {}x{} cells holds {} values",
            heatmap.rows,
            heatmap.cols,
            heatmap.values.len()
        ));
    }
    if image.width == 0 || image.height == 0 {
        return Err("empty image".into());
    }
    let (width, height) = fit(image.width, image.height, side);
    let picture = GrayImage {
        width,
        height,
        pixels: resize_gray(image, width, height),
    };
    render_png(&picture, heatmap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(values: Vec<f32>) -> Heatmap {
        Heatmap {
            rows: 2,
            cols: 2,
            values,
        }
    }

    #[test]
    fn sampling_hits_cell_centres_and_clamps_at_edges() {
        let h = map(vec![1.0, 2.0, 3.0, 4.0]);
        // A 4x4 picture: pixel centres 0.5 and 2.5 fall at grid 0 and 1 after the half-cell shift.
        assert_eq!(sample(&h, 4, 4, 0, 0), 1.0);
        assert_eq!(sample(&h, 4, 4, 3, 0), 2.0);
        assert_eq!(sample(&h, 4, 4, 0, 3), 3.0);
        assert_eq!(sample(&h, 4, 4, 3, 3), 4.0);
        let centre = sample(&h, 4, 4, 1, 1);
        assert!(centre > 1.0 && centre < 4.0);
    }

    #[test]
    fn positive_cells_turn_red_negative_blue() {
        let h = map(vec![2.0, -2.0, 0.0, 0.0]);
        let picture = GrayImage {
            width: 64,
            height: 64,
            pixels: vec![128; 64 * 64],
        };
        let (width, height, rgb) = render_rgb(&picture, &h);
        assert_eq!(height, 64);
        assert!(width > 64, "colour scale beside the picture");
        let px = |x: u32, y: u32| {
            let i = ((y * width + x) * 3) as usize;
            [rgb[i], rgb[i + 1], rgb[i + 2]]
        };
        let top_left = px(2, 2);
        let top_right = px(61, 2);
        let bottom = px(32, 61);
        assert!(top_left[0] > top_left[2] + 50, "{top_left:?}");
        assert!(top_right[2] > top_right[0] + 50, "{top_right:?}");
        assert_eq!(bottom, [128, 128, 128]);
        let png = render_png(&picture, &h).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
    }

    #[test]
    fn weak_cells_leave_the_grey_levels_untouched() {
        // a cell at 30 % of the scale (below the display floor) and one at the scale
        let h = map(vec![0.3, 0.3, 0.3, 1.0]);
        let picture = GrayImage {
            width: 64,
            height: 64,
            pixels: (0..64 * 64).map(|i| (i % 251) as u8).collect(),
        };
        let (width, _, rgb) = render_rgb(&picture, &h);
        let px = |x: u32, y: u32| {
            let i = ((y * width + x) * 3) as usize;
            [rgb[i], rgb[i + 1], rgb[i + 2]]
        };
        let grey = |x: u32, y: u32| picture.pixels[(y * 64 + x) as usize];
        for (x, y) in [(2, 2), (61, 2), (2, 61), (20, 20)] {
            let g = grey(x, y);
            assert_eq!(px(x, y), [g, g, g], "pixel ({x}, {y}) tinted");
        }
        let hot = px(62, 62);
        assert!(hot[0] > hot[2] + 50, "{hot:?}");
    }
}
