//! The decoded image every decoder returns ([`crate::core::decode`] for JPEG and PNG,
//! [`crate::core::dicom`] for DICOM) and every later step reads.

/// An 8-bit grayscale image, row-major, `pixels.len() == width * height`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrayImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Row-major luma values, 0 (black) ..= 255 (white).
    pub pixels: Vec<u8>,
}

/// A decoded image and the size of the full-resolution upright image it came from.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The grayscale image; smaller than `full_width x full_height` when DCT scaling was used.
    pub image: GrayImage,
    /// Upright width of the encoded image, in pixels.
    pub full_width: u32,
    /// Upright height of the encoded image, in pixels.
    pub full_height: u32,
    /// DICOM acquisition attributes (`None` for JPEG and PNG).
    pub acquisition: Option<Acquisition>,
}

/// The DICOM attributes that say what kind of film an image is, read from the header the decoder
/// parses anyway (the out-of-distribution flag looks at them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acquisition {
    /// Modality (0008,0060), e.g. `CR`, `DX`, `CT`; `None` when absent or empty.
    pub modality: Option<String>,
    /// ViewPosition (0018,5101), e.g. `PA`, `AP`, `LL`; `None` when absent or empty.
    pub view_position: Option<String>,
}
