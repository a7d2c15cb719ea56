//! Fuzz target: JPEG bytes through the decoder (full resolution and DCT-scaled), the quality
//! features and the EXIF/Adobe marker scanner. Seeds: fuzz/make_corpus.py (decode_jpeg/).
#![no_main]

use libfuzzer_sys::fuzz_target;

mod checks;

fuzz_target!(|data: &[u8]| {
    let markers = cxrlake::core::exif::scan_jpeg_markers(data);
    assert!((1..=8).contains(&markers.orientation));
    checks::check_full_decode(data);
    checks::check_preprocess(data);
    checks::check_good_jpeg_still_decodes();
});
