//! A test failpoint: makes the core panic on demand, to prove a panic stays in its row.
//!
//! When env `CXRLAKE_TEST_PANIC_MARKER` is set (read once per process), decoding an input whose
//! bytes equal the marker panics. The kernels must turn that panic into the row's
//! `internal error: ...` and carry on; tests/python/test_hardening.py checks it through Python.
//! Unset (the default), this costs one comparison against `None` per image.

use std::sync::OnceLock;

/// Environment variable holding the bytes (as UTF-8 text) that trigger the panic.
pub const PANIC_MARKER_ENV: &str = "CXRLAKE_TEST_PANIC_MARKER";

fn marker() -> Option<&'static [u8]> {
    static MARKER: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    MARKER
        .get_or_init(|| {
            std::env::var_os(PANIC_MARKER_ENV)
                .filter(|v| !v.is_empty())
                .map(|v| v.into_encoded_bytes())
        })
        .as_deref()
}

/// Panics when `data` equals the configured marker; does nothing otherwise.
pub fn panic_if_marked(data: &[u8]) {
    if marker() == Some(data) {
        panic!("test failpoint: input matched {PANIC_MARKER_ENV}");
    }
}
