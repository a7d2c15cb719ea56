//! The out-of-distribution flag: is a film like the films the model was trained on?
//!
//! Two kinds of evidence, each with its reason:
//! - the model's `ood_score` output (a Mahalanobis distance of the embedding from the training
//!   films' embeddings, fitted by `cxrlake.training.ood` and stored in the graph) above the
//!   model's `cxrlake.ood_threshold`;
//! - a DICOM header that says the image is not a frontal radiograph: a Modality other than
//!   CR / DX / DR / RG, or a lateral ViewPosition (LL, RL, LATERAL);
//! - a blank model input (flat grey, black, white: no grey-level range at all), which no
//!   radiograph is and which the embedding distance alone does not separate (every constant image
//!   gives the same embedding, close to the training films' mean).
//!
//! A flagged film is still scored: the flag is a column beside the probability, never a filter.

use crate::core::image::Acquisition;

/// Modalities of projection radiographs (PS3.3 C.7.3.1.1.1: CR, DX, RG; DR is not a defined term
/// but some digital radiography systems write it).
pub const RADIOGRAPH_MODALITIES: [&str; 4] = ["CR", "DX", "DR", "RG"];
/// ViewPosition values of a lateral film (PS3.3 C.8.11.5.1.1 defined terms LL, RL; `LATERAL`
/// and `LAT` written by some systems).
pub const LATERAL_VIEWS: [&str; 4] = ["LL", "RL", "LATERAL", "LAT"];

/// The flag of one scored film.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OodFlag {
    /// The model's score, when it has an `ood_score` output.
    pub score: Option<f64>,
    /// True when any reason applies; false when the score is below the threshold and the header
    /// raises nothing; `None` when the model has no score and the header raises nothing.
    pub flagged: Option<bool>,
    /// Why the film is flagged (reasons joined by `"; "`), `None` when it is not.
    pub reason: Option<String>,
}

/// The flag for a film with `score` (the model's `ood_score`, if any), the model's `threshold`
/// (`cxrlake.ood_threshold`) and the DICOM `acquisition` attributes (`None` for JPEG/PNG).
pub fn ood_flag(
    score: Option<f64>,
    threshold: Option<f64>,
    acquisition: Option<&Acquisition>,
) -> OodFlag {
    let mut reasons: Vec<String> = Vec::new();
    let score = score.filter(|s| s.is_finite());
    let by_score = score.zip(threshold).map(|(s, t)| s > t);
    if let (Some(true), Some(s), Some(t)) = (by_score, score, threshold) {
        reasons.push(format!(
            "unlike the training films (ood score {s:.2} > {t:.2})"
        ));
    }
    if let Some(a) = acquisition {
        if let Some(m) = a.modality.as_deref() {
            if !RADIOGRAPH_MODALITIES.contains(&m) {
                reasons.push(format!("DICOM Modality {m}, not a radiograph (CR/DX)"));
            }
        }
        if let Some(v) = a.view_position.as_deref() {
            if LATERAL_VIEWS.contains(&v) {
                reasons.push(format!("lateral view (DICOM ViewPosition {v})"));
            }
        }
    }
    let flagged = if reasons.is_empty() {
        by_score
    } else {
        Some(true)
    };
    OodFlag {
        score,
        flagged,
        reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
    }
}

/// Grey-level range, on the model's normalised scale (2.0 = black to white), below which a model
/// input counts as blank: 0.02 is 2.5 grey levels; the training films span > 100.
pub const BLANK_INPUT_RANGE: f32 = 0.02;

/// True when one image's model input (`tensor`, one channel or more, normalised) has no
/// grey-level range: a blank image.
pub fn blank_input(tensor: &[f32]) -> bool {
    let (lo, hi) = tensor
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    tensor.is_empty() || hi - lo < BLANK_INPUT_RANGE
}

impl OodFlag {
    /// The flag with the blank-input reason added when `blank`.
    pub fn with_blank(mut self, blank: bool) -> Self {
        if blank {
            let reason = "blank image (no grey-level range), not a radiograph".to_string();
            self.reason = Some(match self.reason.take() {
                Some(r) => format!("{r}; {reason}"),
                None => reason,
            });
            self.flagged = Some(true);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dicom(modality: Option<&str>, view: Option<&str>) -> Acquisition {
        Acquisition {
            modality: modality.map(str::to_string),
            view_position: view.map(str::to_string),
        }
    }

    #[test]
    fn score_above_threshold_flags_with_reason() {
        let f = ood_flag(Some(3.0), Some(2.0), None);
        assert_eq!(f.flagged, Some(true));
        assert!(f.reason.unwrap().contains("ood score 3.00 > 2.00"));
        let f = ood_flag(Some(1.0), Some(2.0), None);
        assert_eq!((f.flagged, f.reason), (Some(false), None));
    }

    #[test]
    fn blank_input_flags_with_reason() {
        assert!(blank_input(&[0.5; 64]));
        assert!(blank_input(&[]));
        let mut film = vec![0.0f32; 64];
        film[3] = 0.5;
        assert!(!blank_input(&film));
        let f = ood_flag(Some(1.0), Some(2.0), None).with_blank(true);
        assert_eq!(f.flagged, Some(true));
        assert!(f.reason.unwrap().contains("blank image"));
        let f = ood_flag(Some(3.0), Some(2.0), None).with_blank(true);
        assert_eq!(f.reason.unwrap().matches("; ").count(), 1);
        let f = ood_flag(Some(1.0), Some(2.0), None).with_blank(false);
        assert_eq!((f.flagged, f.reason), (Some(false), None));
    }

    #[test]
    fn no_score_and_plain_image_is_unknown() {
        assert_eq!(ood_flag(None, None, None).flagged, None);
        assert_eq!(
            ood_flag(None, None, Some(&dicom(Some("CR"), Some("PA")))).flagged,
            None
        );
    }

    #[test]
    fn dicom_modality_and_lateral_view_flag() {
        let f = ood_flag(Some(1.0), Some(2.0), Some(&dicom(Some("CT"), None)));
        assert_eq!(f.flagged, Some(true));
        assert!(f.reason.unwrap().contains("Modality CT"));
        let f = ood_flag(Some(1.0), Some(2.0), Some(&dicom(Some("DX"), Some("LL"))));
        assert_eq!(f.flagged, Some(true));
        assert!(f.reason.unwrap().contains("ViewPosition LL"));
        let f = ood_flag(None, None, Some(&dicom(Some("MR"), Some("RL"))));
        assert_eq!(f.flagged, Some(true));
        assert_eq!(f.reason.unwrap().matches("; ").count(), 1);
        let f = ood_flag(Some(1.0), Some(2.0), Some(&dicom(Some("DX"), Some("PA"))));
        assert_eq!(f.flagged, Some(false));
    }
}
