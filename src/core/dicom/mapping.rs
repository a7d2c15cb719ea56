//! Stored sample values to output bytes: masking to Bits Stored, the modality step (Modality
//! LUT or rescale), the VOI step (VOI LUT, window or full range) and the MONOCHROME1 inversion, as
//! described in the [module docs](super).

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::VoiLutFunction;

use crate::core::error::{RowError, RowResult};

/// A stored value (masked to Bits Stored, sign-extended when Pixel Representation is 1).
pub(super) fn stored_value(raw: u32, bits_stored: u32, signed: bool) -> i32 {
    let bits = bits_stored.clamp(1, 32);
    let v = if bits >= 32 {
        raw
    } else {
        raw & ((1u32 << bits) - 1)
    };
    if signed && bits < 32 {
        let shift = 32 - bits;
        ((v << shift) as i32) >> shift
    } else {
        v as i32
    }
}

/// Stored sample values of a single-sample frame, masked to Bits Stored and sign-extended.
pub(super) fn stored_values(frame: &dicom_pixeldata::DecodedPixelData<'_>) -> RowResult<Vec<i32>> {
    let bits_stored = frame.bits_stored().clamp(1, 16) as u32;
    let signed = frame.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed;
    let count = frame.rows() as usize * frame.columns() as usize;
    let data = frame.data();
    let values: Vec<i32> = match frame.bits_allocated() {
        8 => data
            .iter()
            .take(count)
            .map(|&b| stored_value(b as u32, bits_stored, signed))
            .collect(),
        16 => data
            .chunks_exact(2)
            .take(count)
            .map(|b| stored_value(u16::from_le_bytes([b[0], b[1]]) as u32, bits_stored, signed))
            .collect(),
        other => {
            return Err(RowError::new(format!(
                "unsupported DICOM image: {other} bits allocated (8 or 16 are decoded)"
            )))
        }
    };
    if values.len() != count {
        return Err(RowError::new(format!(
            "truncated DICOM pixel data: {} of {count} pixels",
            values.len()
        )));
    }
    Ok(values)
}

/// How modality values become output bytes.
enum Voi {
    Lut {
        first: i64,
        entries: Vec<u16>,
        low: f64,
        high: f64,
    },
    Window {
        center: f64,
        width: f64,
        function: VoiLutFunction,
    },
    FullRange {
        low: f64,
        high: f64,
    },
}

impl Voi {
    /// The output level (0.0 ..= 255.0, before rounding) of modality value `m`.
    fn level(&self, m: f64) -> f64 {
        match self {
            Voi::Lut {
                first,
                entries,
                low,
                high,
            } => {
                let index = (m.floor() as i64 - first).clamp(0, entries.len() as i64 - 1);
                let v = entries[index as usize] as f64;
                if high > low {
                    255.0 * (v - low) / (high - low)
                } else {
                    0.0
                }
            }
            Voi::Window {
                center,
                width,
                function,
            } => window_level(m, *center, *width, *function),
            Voi::FullRange { low, high } => {
                if high > low {
                    255.0 * (m - low) / (high - low)
                } else {
                    0.0
                }
            }
        }
    }
}

/// PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT) and C.11.2.1.3 (SIGMOID), output range 0..255.
pub fn window_level(m: f64, center: f64, width: f64, function: VoiLutFunction) -> f64 {
    match function {
        VoiLutFunction::Linear => {
            let (c, w) = (center - 0.5, width - 1.0);
            if m <= c - w / 2.0 {
                0.0
            } else if m > c + w / 2.0 {
                255.0
            } else {
                ((m - c) / w + 0.5) * 255.0
            }
        }
        VoiLutFunction::LinearExact => {
            if m <= center - width / 2.0 {
                0.0
            } else if m > center + width / 2.0 {
                255.0
            } else {
                ((m - center) / width + 0.5) * 255.0
            }
        }
        VoiLutFunction::Sigmoid => 255.0 / (1.0 + (-4.0 * (m - center) / width).exp()),
    }
}

/// A lookup table from a Modality LUT or VOI LUT Sequence item (PS3.3 C.11.1, C.11.2): input
/// values below `first` map to the first entry, values past the end to the last.
struct Lut {
    first: i64,
    entries: Vec<u16>,
}

impl Lut {
    fn get(&self, input: i64) -> u16 {
        let index = (input.saturating_sub(self.first)).clamp(0, self.entries.len() as i64 - 1);
        self.entries[index as usize]
    }
}

/// The Modality LUT of the data set: the first item of the Modality LUT Sequence (0028,3000), read
/// as PS3.3 C.11.1.1 and pydicom's `apply_modality_lut` read it. LUT Descriptor: number of
/// entries (0 means 65,536), first stored value mapped (signed when Pixel Representation is 1,
/// whether the descriptor is written as US or SS), bits per entry (8 or 16). A present but
/// unusable sequence is a row error: guessing a rescale instead would give wrong intensities.
fn modality_lut(object: &DefaultDicomObject) -> RowResult<Option<Lut>> {
    let Some(sequence) = object.get(tags::MODALITY_LUT_SEQUENCE) else {
        return Ok(None);
    };
    let bad = |what: &str| RowError::new(format!("corrupt DICOM Modality LUT Sequence: {what}"));
    let item = sequence
        .items()
        .and_then(|items| items.first())
        .ok_or_else(|| bad("no item"))?;
    let descriptor: Vec<i64> = item
        .get(tags::LUT_DESCRIPTOR)
        .and_then(|e| e.to_multi_int::<i64>().ok())
        .filter(|d| d.len() == 3)
        .ok_or_else(|| bad("LUT Descriptor is not 3 numbers"))?;
    let count = match descriptor[0] {
        0 => 65_536,
        n @ 1..=65_535 => n as usize,
        // Written as SS: entries past 32,767 read negative.
        n @ -32_768..=-1 => (n + 65_536) as usize,
        n => return Err(bad(&format!("{n} entries"))),
    };
    let signed = object
        .get(tags::PIXEL_REPRESENTATION)
        .and_then(|e| e.to_int::<u16>().ok())
        == Some(1);
    let first = match descriptor[1] {
        v if signed && v > 32_767 => v - 65_536,
        v => v,
    };
    let entries: Vec<u16> = item
        .get(tags::LUT_DATA)
        .and_then(|e| e.to_multi_int::<u16>().ok())
        .ok_or_else(|| bad("no LUT Data"))?;
    if entries.len() < count {
        return Err(bad(&format!(
            "{} LUT Data entries for {count} in the descriptor",
            entries.len()
        )));
    }
    let mut entries = entries;
    entries.truncate(count);
    Ok(Some(Lut { first, entries }))
}

/// The first item of the VOI LUT Sequence, read like dicom-pixeldata reads it for the full
/// decoding path (descriptor: entries, first value mapped, bits; data as many entries); `None`
/// when absent or unusable (then the window or the full range applies, as on that path).
fn voi_lut(object: &DefaultDicomObject) -> Option<Lut> {
    let item = object.get(tags::VOILUT_SEQUENCE)?.items()?.first()?;
    let descriptor = item.get(tags::LUT_DESCRIPTOR)?.to_multi_int::<i32>().ok()?;
    if descriptor.len() != 3 || descriptor[0] <= 0 || !(0..=16).contains(&descriptor[2]) {
        return None;
    }
    let entries = item.get(tags::LUT_DATA)?.to_multi_int::<u16>().ok()?;
    (entries.len() == descriptor[0] as usize).then_some(Lut {
        first: descriptor[1] as i64,
        entries,
    })
}

/// How stored values become output bytes: the modality step (Modality LUT or rescale), the VOI
/// step, the inversion.
pub(super) struct Mapping {
    slope: f64,
    intercept: f64,
    /// Modality LUT Sequence (0028,3000): replaces the rescale when present (PS3.3 C.11.1).
    modality_lut: Option<Lut>,
    /// First item of the VOI LUT Sequence.
    lut: Option<Lut>,
    /// First window: centre, width, function.
    window: Option<(f64, f64, VoiLutFunction)>,
    invert: bool,
}

fn usable_window(center: f64, width: f64, function: VoiLutFunction) -> bool {
    center.is_finite()
        && width.is_finite()
        && match function {
            VoiLutFunction::Linear => width >= 1.0,
            _ => width > 0.0,
        }
}

fn usable_rescale(slope: f64, intercept: f64) -> (f64, f64) {
    if slope.is_finite() && intercept.is_finite() && slope != 0.0 {
        (slope, intercept)
    } else {
        (1.0, 0.0)
    }
}

impl Mapping {
    /// The mapping of a frame dicom-pixeldata decoded (which reads rescale, windows and VOI LUTs
    /// from the data set or its functional groups), plus the data set's Modality LUT.
    pub(super) fn from_frame(
        frame: &dicom_pixeldata::DecodedPixelData<'_>,
        object: &DefaultDicomObject,
    ) -> RowResult<Self> {
        let (slope, intercept) = match frame.rescale() {
            Ok(rescale) => rescale
                .first()
                .map(|r| (r.slope, r.intercept))
                .unwrap_or((1.0, 0.0)),
            Err(_) => (1.0, 0.0),
        };
        let lut = match frame.voi_lut_sequence() {
            Ok(Some(luts)) => luts.first().filter(|l| !l.data.is_empty()).map(|l| Lut {
                first: l.min_pixel_value as i64,
                entries: l.data.clone(),
            }),
            _ => None,
        };
        let function = frame
            .voi_lut_function()
            .ok()
            .flatten()
            .and_then(|f| f.first().copied())
            .unwrap_or_default();
        let window = match frame.window() {
            Ok(Some(windows)) => windows
                .first()
                .map(|w| (w.center, w.width, function))
                .filter(|&(c, w, f)| usable_window(c, w, f)),
            _ => None,
        };
        let (slope, intercept) = usable_rescale(slope, intercept);
        Ok(Mapping {
            slope,
            intercept,
            modality_lut: modality_lut(object)?,
            lut,
            window,
            invert: matches!(
                frame.photometric_interpretation(),
                dicom_pixeldata::PhotometricInterpretation::Monochrome1
            ),
        })
    }

    /// The same mapping read from the data set's top-level attributes, for pixels decoded
    /// outside dicom-pixeldata (12-bit JPEG, reduced-resolution JPEG 2000).
    pub(super) fn from_object(object: &DefaultDicomObject) -> RowResult<Self> {
        let float = |tag: Tag| object.get(tag).and_then(|e| e.to_float64().ok());
        let first = |tag: Tag| {
            object
                .get(tag)
                .and_then(|e| e.to_multi_float64().ok())
                .and_then(|v| v.first().copied())
        };
        let text = |tag: Tag| {
            object
                .get(tag)
                .and_then(|e| e.to_str().ok())
                .map(|t| t.trim_end_matches(['\0', ' ']).to_string())
                .unwrap_or_default()
        };
        let function = match text(tags::VOILUT_FUNCTION).as_str() {
            "LINEAR_EXACT" => VoiLutFunction::LinearExact,
            "SIGMOID" => VoiLutFunction::Sigmoid,
            _ => VoiLutFunction::Linear,
        };
        let window = match (first(tags::WINDOW_CENTER), first(tags::WINDOW_WIDTH)) {
            (Some(c), Some(w)) if usable_window(c, w, function) => Some((c, w, function)),
            _ => None,
        };
        let (slope, intercept) = usable_rescale(
            float(tags::RESCALE_SLOPE).unwrap_or(1.0),
            float(tags::RESCALE_INTERCEPT).unwrap_or(0.0),
        );
        Ok(Mapping {
            slope,
            intercept,
            modality_lut: modality_lut(object)?,
            lut: voi_lut(object),
            window,
            invert: text(tags::PHOTOMETRIC_INTERPRETATION) == "MONOCHROME1",
        })
    }

    fn voi(&self, m_low: f64, m_high: f64) -> Voi {
        if let Some(lut) = &self.lut {
            let low = *lut.entries.iter().min().expect("non-empty") as f64;
            let high = *lut.entries.iter().max().expect("non-empty") as f64;
            return Voi::Lut {
                first: lut.first,
                entries: lut.entries.clone(),
                low,
                high,
            };
        }
        if let Some((center, width, function)) = self.window {
            return Voi::Window {
                center,
                width,
                function,
            };
        }
        Voi::FullRange {
            low: m_low,
            high: m_high,
        }
    }

    /// The modality value of stored value `s`: the Modality LUT entry, else the rescale.
    fn modality(&self, s: i32) -> f64 {
        match &self.modality_lut {
            Some(lut) => lut.get(s as i64) as f64,
            None => s as f64 * self.slope + self.intercept,
        }
    }

    /// Maps stored values to output bytes through a table over the values present (at most
    /// 65,536 entries for 16-bit samples).
    pub(super) fn apply(&self, values: &[i32]) -> Vec<u8> {
        if values.is_empty() {
            return Vec::new();
        }
        let (raw_min, raw_max) = values
            .iter()
            .fold((i32::MAX, i32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        // The full range is over the modality values present: the rescale is monotonic, a
        // Modality LUT need not be.
        let (m_low, m_high) = if self.modality_lut.is_some() {
            values.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| {
                let m = self.modality(v);
                (lo.min(m), hi.max(m))
            })
        } else {
            let (a, b) = (self.modality(raw_min), self.modality(raw_max));
            (a.min(b), a.max(b))
        };
        let voi = self.voi(m_low, m_high);
        let byte = |s: i32| {
            let byte = (voi.level(self.modality(s)) + 0.5)
                .floor()
                .clamp(0.0, 255.0) as u8;
            if self.invert {
                255 - byte
            } else {
                byte
            }
        };
        let span = (raw_max as i64 - raw_min as i64 + 1) as usize;
        if span > 1 << 16 {
            // Wider than 16-bit samples (a JPEG 2000 codestream may declare up to 38 bits).
            return values.iter().map(|&v| byte(v)).collect();
        }
        let table: Vec<u8> = (0..span)
            .map(|i| byte((raw_min as i64 + i as i64) as i32))
            .collect();
        values
            .iter()
            .map(|&v| table[(v as i64 - raw_min as i64) as usize])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_window_follows_ps3_3() {
        // c = 2048, w = 4096: the ends map to 0 and 255, the centre to the middle.
        let f = VoiLutFunction::Linear;
        assert_eq!(window_level(0.0, 2048.0, 4096.0, f), 0.0);
        assert_eq!(window_level(4095.0, 2048.0, 4096.0, f), 255.0);
        assert!((window_level(2047.5, 2048.0, 4096.0, f) - 127.5).abs() < 1e-9);
        // Width 1 is a threshold at c - 0.5.
        assert_eq!(window_level(99.5, 100.0, 1.0, f), 0.0);
        assert_eq!(window_level(99.6, 100.0, 1.0, f), 255.0);
    }
}
