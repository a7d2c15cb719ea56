//! One pass over a column of images: each image decoded once (DCT-scaled as for `predict`),
//! preprocessed once and scored in one forward pass that also returns the embedding and the
//! heatmap. `analyze` and `explain` are built on it.

use rayon::prelude::*;

use super::columns::Heatmap;
use super::options::{guarded, KernelOptions};
use super::schedule::{infer_and_scatter, pipelined};
use crate::core::decode::decode_gray;
use crate::core::error::{CoreError, RowError, RowResult};
use crate::core::image::{Acquisition, GrayImage};
use crate::core::input::ImageColumn;
use crate::core::model::{Outputs, PneumoniaModel};
use crate::core::ood::{blank_input, ood_flag, OodFlag};
use crate::core::quality::{measure_quality, ImageQuality};
use crate::core::resize::resize_gray;

/// What a pass computes besides the probability.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PassRequest {
    /// Pixel statistics and quality score of the decoded image.
    pub statistics: bool,
    /// Model outputs beyond the probability.
    pub outputs: Outputs,
    /// Keep the upright image resized so that its longer side is this many pixels.
    pub picture: Option<u32>,
}

/// Everything a pass produced for one image.
#[derive(Debug, Clone)]
pub(crate) struct PassRow {
    /// Upright full-resolution width, in pixels.
    pub width: u32,
    /// Upright full-resolution height, in pixels.
    pub height: u32,
    /// Statistics of the decoded (DCT-scaled) image, when requested.
    pub quality: Option<ImageQuality>,
    /// P(PNEUMONIA).
    pub probability: f64,
    /// The embedding, when requested and available.
    pub embedding: Option<Vec<f64>>,
    /// The class-activation map, when requested and available.
    pub heatmap: Option<Heatmap>,
    /// The resized upright image, when requested.
    pub picture: Option<GrayImage>,
    /// The out-of-distribution flag (score from the same forward pass, DICOM attributes).
    pub ood: OodFlag,
}

/// Probability, embedding, heatmap and out-of-distribution score of one scored row.
type Scored = (f64, Option<Vec<f64>>, Option<Heatmap>, Option<f64>);

struct Prepared {
    width: u32,
    height: u32,
    quality: Option<ImageQuality>,
    picture: Option<GrayImage>,
    acquisition: Option<Acquisition>,
}

/// Runs the pass; one result per row of `images`.
pub(crate) fn run_pass(
    images: &ImageColumn,
    model: &PneumoniaModel,
    options: &KernelOptions,
    request: PassRequest,
) -> Result<Vec<RowResult<PassRow>>, CoreError> {
    let pool = options.pool()?;
    let prep = &model.info().preprocessing;
    let ood_threshold = model.info().ood_threshold;
    let len = prep.tensor_len();
    let n = images.len();
    let mut rows: Vec<RowResult<PassRow>> = (0..n)
        .map(|_| Err(RowError::new("not processed")))
        .collect();

    pipelined(
        n,
        options.inference_batch,
        &pool,
        |range| {
            let mut tensors = vec![0f32; range.len() * len];
            let prepared: Vec<RowResult<Prepared>> = tensors
                .par_chunks_mut(len)
                .zip(range.clone().into_par_iter())
                .map(|(out, i)| {
                    guarded(|| {
                        let data = images.load(i, &options.limits, &options.sandbox)?;
                        let decoded =
                            decode_gray(&data, &options.limits, Some((prep.width, prep.height)))?;
                        let quality = request.statistics.then(|| measure_quality(&decoded.image));
                        let resized = prep.resize(&decoded.image);
                        prep.normalise_into(&resized, out);
                        let picture = request.picture.map(|side| {
                            let (w, h) = fit(decoded.full_width, decoded.full_height, side);
                            GrayImage {
                                width: w,
                                height: h,
                                pixels: resize_gray(&decoded.image, w, h),
                            }
                        });
                        Ok(Prepared {
                            width: decoded.full_width,
                            height: decoded.full_height,
                            quality,
                            picture,
                            acquisition: decoded.acquisition,
                        })
                    })
                })
                .collect();
            (tensors, prepared)
        },
        |range, (mut tensors, prepared)| {
            let mut errors: Vec<Option<RowError>> =
                prepared.iter().map(|r| r.as_ref().err().cloned()).collect();
            let mut scored: Vec<Option<Scored>> = vec![None; prepared.len()];
            let blank: Vec<bool> = tensors.chunks(len).map(blank_input).collect();
            infer_and_scatter(
                model,
                &mut tensors,
                &mut errors,
                len,
                request.outputs,
                |offset, out| {
                    scored[offset] = Some((
                        out.probability,
                        out.embedding.map(|e| e.iter().map(|&v| v as f64).collect()),
                        out.heatmap.map(|(rows, cols, values)| Heatmap {
                            rows,
                            cols,
                            values: values.to_vec(),
                        }),
                        out.ood_score,
                    ));
                },
            );
            for (offset, (((prepared, error), scored), blank)) in prepared
                .into_iter()
                .zip(errors)
                .zip(scored)
                .zip(blank)
                .enumerate()
            {
                rows[range.start + offset] = match (prepared, error, scored) {
                    (_, Some(e), _) | (Err(e), _, _) => Err(e),
                    (Ok(p), None, Some((probability, embedding, heatmap, score))) => {
                        let ood = ood_flag(score, ood_threshold, p.acquisition.as_ref())
                            .with_blank(blank);
                        Ok(PassRow {
                            width: p.width,
                            height: p.height,
                            quality: p.quality,
                            probability,
                            embedding,
                            heatmap,
                            picture: p.picture,
                            ood,
                        })
                    }
                    (Ok(_), None, None) => Err(RowError::new("no prediction")),
                };
            }
        },
    );
    Ok(rows)
}

/// The size of a `width x height` image scaled so that its longer side is `side` pixels.
pub(crate) fn fit(width: u32, height: u32, side: u32) -> (u32, u32) {
    let (width, height) = (width.max(1) as u64, height.max(1) as u64);
    let side = side.max(1) as u64;
    if width >= height {
        (
            side as u32,
            ((height * side + width / 2) / width).max(1) as u32,
        )
    } else {
        (
            ((width * side + height / 2) / height).max(1) as u32,
            side as u32,
        )
    }
}
