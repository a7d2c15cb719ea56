//! Fuzz target: DICOM Part 10 files through the decoder (structure pre-scan, dicom-rs parsing,
//! every supported transfer syntax, modality and VOI mapping), the quality features and the model
//! preprocessing. The input is the file after its 128-byte preamble and `DICM` prefix, which the
//! target adds, so every input takes the DICOM path.
//! Seeds: fuzz/make_corpus.py (decode_dicom/: pydicom's small test files and mutations).
#![no_main]

use libfuzzer_sys::fuzz_target;

mod checks;

fuzz_target!(|data: &[u8]| {
    let mut file = vec![0u8; 128];
    file.extend_from_slice(b"DICM");
    file.extend_from_slice(data);
    checks::check_full_decode(&file);
    checks::check_preprocess(&file);
});
