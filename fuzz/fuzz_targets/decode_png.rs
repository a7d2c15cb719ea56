//! Fuzz target: PNG bytes through the decoder (every colour type and bit depth, interlacing,
//! eXIf orientation), the quality features and the model preprocessing.
//! Seeds: fuzz/make_corpus.py (decode_png/).
#![no_main]

use libfuzzer_sys::fuzz_target;

mod checks;

fuzz_target!(|data: &[u8]| {
    checks::check_full_decode(data);
    checks::check_preprocess(data);
    // The EXIF reader also sees raw eXIf chunk payloads: feed it the input directly too.
    assert!((1..=8).contains(&cxrlake::core::exif::orientation_from_tiff(data)));
});
