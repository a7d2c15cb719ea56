//! The decode/infer schedule: chunks that ramp up and down, decoding of chunk k+1 on the rayon
//! pool while ONNX Runtime scores chunk k on the calling thread, and the one helper that runs the
//! model on a chunk's good rows and scatters the outputs back to their rows.

use std::ops::Range;
use std::sync::mpsc::sync_channel;

use rayon::ThreadPool;

use crate::core::error::RowError;
use crate::core::model::{Outputs, PneumoniaModel};

/// Chunk boundaries for a pipeline over `0..n` with steady chunk size `chunk`.
///
/// Chunks ramp up (2, 4, 8, ... `chunk`) and back down at the end: the first decode and the last
/// inference cannot overlap anything, so they are kept small.
pub fn chunk_schedule(n: usize, chunk: usize) -> Vec<Range<usize>> {
    let chunk = chunk.max(1);
    let mut ramp = Vec::new();
    let mut size = 2.min(chunk);
    while size < chunk {
        ramp.push(size);
        size *= 2;
    }
    let ramp_total: usize = ramp.iter().sum();
    let mut sizes: Vec<usize> = Vec::new();
    if n <= 2 * ramp_total + chunk {
        // Too few rows for a steady state: split evenly into chunks of at most chunk / 2.
        let piece = (chunk / 2).max(1);
        let mut left = n;
        while left > 0 {
            let take = piece.min(left);
            sizes.push(take);
            left -= take;
        }
    } else {
        sizes.extend(&ramp);
        let middle = n - 2 * ramp_total;
        let full = middle / chunk;
        sizes.extend(std::iter::repeat_n(chunk, full));
        if !middle.is_multiple_of(chunk) {
            sizes.push(middle % chunk);
        }
        sizes.extend(ramp.iter().rev());
    }
    let mut start = 0;
    sizes
        .into_iter()
        .map(|size| {
            let range = start..start + size;
            start += size;
            range
        })
        .collect()
}

/// Runs `produce` for each chunk of [`chunk_schedule`] on `pool` while `consume` handles the
/// previous chunk on the calling thread (at most one finished chunk waits between them).
pub(crate) fn pipelined<P: Send>(
    n: usize,
    chunk: usize,
    pool: &ThreadPool,
    produce: impl Fn(Range<usize>) -> P + Sync,
    mut consume: impl FnMut(Range<usize>, P),
) {
    let (sender, receiver) = sync_channel::<(Range<usize>, P)>(1);
    std::thread::scope(|scope| {
        let produce = &produce;
        scope.spawn(move || {
            for range in chunk_schedule(n, chunk) {
                let product = pool.install(|| produce(range.clone()));
                if sender.send((range, product)).is_err() {
                    break;
                }
            }
        });
        for (range, product) in receiver {
            consume(range, product);
        }
    });
}

/// What the model returned for one row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowOutput<'a> {
    /// P(PNEUMONIA), finite.
    pub probability: f64,
    /// The embedding, when asked for and the model has one.
    pub embedding: Option<&'a [f32]>,
    /// The class-activation map `(rows, cols, values)`, when asked for and the model has one.
    pub heatmap: Option<(usize, usize, &'a [f32])>,
    /// The out-of-distribution score, when asked for and the model has one.
    pub ood_score: Option<f64>,
}

/// Runs `model` on the rows of a chunk whose `errors` entry is `None` (their tensors, `len`
/// floats each, in `tensors`; failed rows' tensors are skipped) and calls
/// `scatter(offset, output)` for each of them. A failed run, or a non-finite probability, becomes
/// those rows' error instead.
pub(crate) fn infer_and_scatter(
    model: &PneumoniaModel,
    tensors: &mut [f32],
    errors: &mut [Option<RowError>],
    len: usize,
    want: Outputs,
    mut scatter: impl FnMut(usize, RowOutput<'_>),
) {
    let ok = compact_ok_rows(tensors, errors, len);
    if ok.is_empty() {
        return;
    }
    match model.infer(&tensors[..ok.len() * len], ok.len(), want) {
        Ok(output) => {
            let dim = output.embeddings.as_ref().map(|e| e.len() / ok.len());
            for (k, &offset) in ok.iter().enumerate() {
                let probability = output.probabilities[k] as f64;
                if !probability.is_finite() {
                    errors[offset] = Some(RowError::new("model returned a non-finite probability"));
                    continue;
                }
                let embedding = output
                    .embeddings
                    .as_deref()
                    .zip(dim)
                    .map(|(values, dim)| &values[k * dim..(k + 1) * dim]);
                let heatmap = output
                    .heatmaps
                    .as_ref()
                    .map(|h| (h.rows, h.cols, h.grid(k)));
                let ood_score = output.ood_scores.as_ref().map(|s| s[k] as f64);
                scatter(
                    offset,
                    RowOutput {
                        probability,
                        embedding,
                        heatmap,
                        ood_score,
                    },
                );
            }
        }
        Err(message) => {
            for &offset in &ok {
                errors[offset] = Some(RowError::new(message.clone()));
            }
        }
    }
}

/// Moves the tensors of rows without error to the front of `tensors`; returns their row offsets.
fn compact_ok_rows(tensors: &mut [f32], errors: &[Option<RowError>], len: usize) -> Vec<usize> {
    let mut ok = Vec::with_capacity(errors.len());
    for (row, error) in errors.iter().enumerate() {
        if error.is_none() {
            let dst = ok.len();
            if dst != row {
                tensors.copy_within(row * len..(row + 1) * len, dst * len);
            }
            ok.push(row);
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_schedule_covers_every_row_once() {
        for n in [0usize, 1, 2, 3, 7, 16, 31, 32, 33, 100, 200, 1000] {
            for chunk in [1usize, 2, 5, 16, 32] {
                let ranges = chunk_schedule(n, chunk);
                let mut next = 0;
                for r in &ranges {
                    assert_eq!(r.start, next, "n={n} chunk={chunk} {ranges:?}");
                    assert!(
                        !r.is_empty() && r.len() <= chunk,
                        "n={n} chunk={chunk} {ranges:?}"
                    );
                    next = r.end;
                }
                assert_eq!(next, n, "n={n} chunk={chunk}");
            }
        }
    }

    #[test]
    fn chunk_schedule_ramps_up_and_down() {
        let sizes: Vec<usize> = chunk_schedule(200, 16).iter().map(|r| r.len()).collect();
        assert_eq!(&sizes[..3], &[2, 4, 8]);
        assert_eq!(&sizes[sizes.len() - 3..], &[8, 4, 2]);
        assert!(sizes.iter().filter(|&&s| s == 16).count() >= 9);
    }

    #[test]
    fn compact_moves_good_rows_to_the_front() {
        let mut tensors = vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0];
        let errors = vec![Some(RowError::new("bad")), None, None];
        assert_eq!(compact_ok_rows(&mut tensors, &errors, 2), vec![1, 2]);
        assert_eq!(&tensors[..4], &[1.0, 1.0, 2.0, 2.0]);
    }
}
