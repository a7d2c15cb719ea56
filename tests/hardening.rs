//! Hardening of the core against hostile inputs (issue 6): decompression bombs refused from the
//! header before any large allocation, and the path sandbox (`..`, symlinks out of the roots,
//! devices and FIFOs) refusing per row with a clear error.
//!
//! Allocations are measured with a counting global allocator that records, per thread, the peak
//! of live bytes during a call; the decoders run on the calling thread, so the peak is exactly
//! what one decode allocated through Rust.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use cxrlake::core::decode::decode_gray;
use cxrlake::core::limits::Limits;
use cxrlake::core::sandbox::Sandbox;

struct CountingAllocator;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn record(delta: isize) {
    // `try_with`: allocations during thread teardown happen after the thread-locals are gone.
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add_signed(delta);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size() as isize);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size() as isize);
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `f` and returns its result with the peak of bytes it held live at once (this thread).
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    let result = f();
    let peak = PEAK.with(Cell::get) - start;
    (result, peak)
}

/// "A few MB": what refusing a bomb may allocate at most (decoder state, error strings).
const FEW_MB: usize = 4 << 20;

// ---------------------------------------------------------------------------------------------
// Bomb headers

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

/// A PNG whose header announces `width x height` (8-bit, colour type `color`) with a valid CRC,
/// followed by a tiny stored-deflate IDAT and IEND: everything a decoder needs to start.
fn png_bomb(width: u32, height: u32, color: u8) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, color, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    // zlib header, one final stored block of `n` zero bytes (enough scanlines for a small image,
    // at most 64 bytes for a bomb), Adler-32 of `n` zeros.
    let channels: u64 = match color {
        2 => 3,
        6 => 4,
        _ => 1,
    };
    let n = (height as u64 * (1 + width as u64 * channels)).min(64) as u16;
    let mut idat = vec![0x78, 0x01, 0x01];
    idat.extend_from_slice(&n.to_le_bytes());
    idat.extend_from_slice(&(!n).to_le_bytes());
    idat.extend(std::iter::repeat_n(0u8, n as usize));
    idat.extend_from_slice(&(((n as u32) << 16) | 1).to_be_bytes());
    png.extend(png_chunk(b"IDAT", &idat));
    png.extend(png_chunk(b"IEND", b""));
    png
}

/// A real 16x16 JPEG (libjpeg-turbo) whose SOF is patched to announce `width x height`.
fn jpeg_bomb(width: u16, height: u16, format: turbojpeg::PixelFormat) -> Vec<u8> {
    let channels = format.size();
    let pixels: Vec<u8> = (0..16 * 16 * channels)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let image = turbojpeg::Image {
        pixels: pixels.as_slice(),
        width: 16,
        pitch: 16 * channels,
        height: 16,
        format,
    };
    let subsamp = if format == turbojpeg::PixelFormat::GRAY {
        turbojpeg::Subsamp::Gray
    } else {
        turbojpeg::Subsamp::Sub2x2
    };
    let mut jpeg = turbojpeg::compress(image, 90, subsamp)
        .expect("compress a 16x16 JPEG")
        .to_vec();
    let sof = jpeg
        .windows(2)
        .position(|w| w[0] == 0xFF && matches!(w[1], 0xC0..=0xC2))
        .expect("JPEG has a SOF marker");
    // SOF: FF Cx, length (2), precision (1), height (2), width (2).
    jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    jpeg
}

fn assert_refused_cheaply(data: &[u8], expected_error: &str) {
    let limits = Limits::default();
    let (result, peak) = peak_allocation(|| decode_gray(data, &limits, None));
    let error = result.expect_err("a bomb header must be refused").0;
    assert_eq!(error, expected_error);
    assert!(peak < FEW_MB, "refusing the header allocated {peak} bytes");
    // The scaled path (model preprocessing) must refuse just as early.
    let (result, peak) = peak_allocation(|| decode_gray(data, &limits, Some((224, 224))));
    assert_eq!(
        result.expect_err("bomb refused when scaling").0,
        expected_error
    );
    assert!(
        peak < FEW_MB,
        "refusing the header (scaled) allocated {peak} bytes"
    );
}

#[test]
fn png_60000x60000_header_is_refused_without_allocating() {
    for color in [0u8, 2, 6] {
        assert_refused_cheaply(
            &png_bomb(60_000, 60_000, color),
            "image 60000x60000 exceeds 100 megapixel limit",
        );
    }
}

#[test]
fn png_with_maximal_dimensions_is_refused_without_allocating() {
    // 2^31-1 is the largest size PNG allows: width * height overflows 32 bits.
    assert_refused_cheaply(
        &png_bomb(i32::MAX as u32, i32::MAX as u32, 6),
        "image 2147483647x2147483647 exceeds 100 megapixel limit",
    );
}

#[test]
fn jpeg_65000x65000_header_is_refused_without_allocating() {
    for format in [turbojpeg::PixelFormat::GRAY, turbojpeg::PixelFormat::RGB] {
        assert_refused_cheaply(
            &jpeg_bomb(65_000, 65_000, format),
            "image 65000x65000 exceeds 100 megapixel limit",
        );
    }
}

#[test]
fn the_bomb_inputs_decode_once_their_size_is_honest() {
    // Guards the two tests above: the refusal comes from the size, not from a broken file.
    let limits = Limits::default();
    let png = png_bomb(4, 4, 0);
    let decoded = decode_gray(&png, &limits, None).expect("4x4 PNG decodes");
    assert_eq!((decoded.image.width, decoded.image.height), (4, 4));
    let jpeg = jpeg_bomb(16, 16, turbojpeg::PixelFormat::RGB);
    let decoded = decode_gray(&jpeg, &limits, None).expect("16x16 JPEG decodes");
    assert_eq!((decoded.image.width, decoded.image.height), (16, 16));
}

#[test]
fn a_lower_pixel_limit_is_named_in_the_error() {
    let limits = Limits {
        max_pixels: 500_000,
        ..Limits::default()
    };
    let jpeg = jpeg_bomb(1000, 1000, turbojpeg::PixelFormat::GRAY);
    assert_eq!(
        decode_gray(&jpeg, &limits, None).unwrap_err().0,
        "image 1000x1000 exceeds 0.5 megapixel limit"
    );
}

// ---------------------------------------------------------------------------------------------
// Path sandbox

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("cxrlake-hardening-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `root/` holding `inside.png`, next to `outside.png`; returns (tempdir, root).
fn sandbox_layout(name: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(name);
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("inside.png"), png_bomb(4, 4, 0)).unwrap();
    std::fs::write(dir.path().join("outside.png"), png_bomb(4, 4, 0)).unwrap();
    (dir, root)
}

fn read_error(sandbox: &Sandbox, path: &Path) -> String {
    sandbox
        .read(path.to_str().unwrap(), &Limits::default())
        .expect_err("the sandbox must refuse this path")
        .0
}

#[test]
fn files_inside_the_roots_are_read() {
    let (_dir, root) = sandbox_layout("inside");
    let sandbox = Sandbox::with_roots([&root]).unwrap();
    let bytes = sandbox
        .read(
            root.join("inside.png").to_str().unwrap(),
            &Limits::default(),
        )
        .expect("a file inside the root is readable");
    assert_eq!(bytes, png_bomb(4, 4, 0));
    // `..` that stays inside the root is fine.
    let via_dotdot = root.join("sub/../inside.png");
    assert!(sandbox
        .read(via_dotdot.to_str().unwrap(), &Limits::default())
        .is_ok());
}

#[test]
fn etc_passwd_is_outside_the_roots() {
    let (_dir, root) = sandbox_layout("passwd");
    let sandbox = Sandbox::with_roots([&root]).unwrap();
    assert_eq!(
        read_error(&sandbox, Path::new("/etc/passwd")),
        "outside sandbox roots: /etc/passwd"
    );
}

#[test]
fn dotdot_cannot_leave_the_roots() {
    let (_dir, root) = sandbox_layout("dotdot");
    let sandbox = Sandbox::with_roots([&root]).unwrap();
    let escape = root.join("sub/../../outside.png");
    assert_eq!(
        read_error(&sandbox, &escape),
        format!("outside sandbox roots: {}", escape.display())
    );
    // A relative `../../x.jpeg` resolves against the working directory, never inside the root.
    let error = read_error(&sandbox, Path::new("../../x.jpeg"));
    assert!(
        error == "outside sandbox roots: ../../x.jpeg" || error == "file not found: ../../x.jpeg",
        "{error}"
    );
}

#[cfg(unix)]
#[test]
fn symlinks_out_of_the_roots_are_refused() {
    let (dir, root) = sandbox_layout("symlink");
    let sandbox = Sandbox::with_roots([&root]).unwrap();
    let link = root.join("link.png");
    std::os::unix::fs::symlink(dir.path().join("outside.png"), &link).unwrap();
    assert_eq!(
        read_error(&sandbox, &link),
        format!("outside sandbox roots: {}", link.display())
    );
    let dir_link = root.join("etc");
    std::os::unix::fs::symlink("/etc", &dir_link).unwrap();
    let passwd = dir_link.join("passwd");
    assert_eq!(
        read_error(&sandbox, &passwd),
        format!("outside sandbox roots: {}", passwd.display())
    );
    // A symlink that stays inside the root is followed.
    let inner = root.join("sub/inner.png");
    std::os::unix::fs::symlink(root.join("inside.png"), &inner).unwrap();
    assert!(sandbox
        .read(inner.to_str().unwrap(), &Limits::default())
        .is_ok());
}

#[test]
fn a_root_prefix_is_not_a_parent() {
    // `/tmp/x/root` must not allow `/tmp/x/rootkit/...`.
    let (dir, root) = sandbox_layout("prefix");
    let sibling = dir.path().join("rootkit");
    std::fs::create_dir_all(&sibling).unwrap();
    std::fs::write(sibling.join("a.png"), png_bomb(4, 4, 0)).unwrap();
    let sandbox = Sandbox::with_roots([&root]).unwrap();
    let path = sibling.join("a.png");
    assert_eq!(
        read_error(&sandbox, &path),
        format!("outside sandbox roots: {}", path.display())
    );
}

#[cfg(unix)]
#[test]
fn fifos_and_devices_are_refused_without_blocking() {
    let (_dir, root) = sandbox_layout("fifo");
    let fifo = root.join("pipe.jpeg");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path and mode.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    let sandbox = Sandbox::with_roots([&root]).unwrap();
    // No writer ever opens the FIFO: a blocking open would hang this test forever.
    assert_eq!(
        read_error(&sandbox, &fifo),
        format!("not a regular file: {}", fifo.display())
    );
    assert_eq!(
        read_error(&Sandbox::allow_all(), Path::new("/dev/zero")),
        "not a regular file: /dev/zero"
    );
    assert_eq!(
        read_error(&Sandbox::allow_all(), &root.join("sub")),
        format!("not a regular file: {}", root.join("sub").display())
    );
}

#[test]
fn oversized_and_empty_files_are_refused_by_size() {
    let (_dir, root) = sandbox_layout("sizes");
    let big = root.join("big.jpeg");
    std::fs::write(&big, vec![0u8; 4096]).unwrap();
    let empty = root.join("empty.jpeg");
    std::fs::write(&empty, b"").unwrap();
    let sandbox = Sandbox::with_roots([&root]).unwrap();
    let small = Limits {
        max_file_bytes: 1024,
        ..Limits::default()
    };
    let (result, peak) = peak_allocation(|| sandbox.read(big.to_str().unwrap(), &small));
    assert!(
        result
            .unwrap_err()
            .0
            .starts_with("file exceeds 1 KiB limit"),
        "size limit named"
    );
    assert!(peak < 4096, "the oversized file was read ({peak} bytes)");
    assert_eq!(
        read_error(&sandbox, &empty),
        format!("empty image data: {}", empty.display())
    );
}

#[test]
fn a_missing_root_is_a_configuration_error() {
    let error = Sandbox::with_roots(["/nonexistent/cxrlake-root"]).unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/cxrlake-root"),
        "{error}"
    );
}

#[test]
fn missing_paths_outside_the_roots_do_not_reveal_existence() {
    let (dir, root) = sandbox_layout("existence");
    let sandbox = Sandbox::with_roots([&root]).unwrap();
    // Missing outside the root: the same answer as an existing file outside the root.
    let missing = dir.path().join("no-such-file.jpeg");
    assert_eq!(
        read_error(&sandbox, &missing),
        format!("outside sandbox roots: {}", missing.display())
    );
    let missing_dir = Path::new("/nonexistent-cxrlake/x.jpeg");
    assert_eq!(
        read_error(&sandbox, missing_dir),
        "outside sandbox roots: /nonexistent-cxrlake/x.jpeg"
    );
    // `..` through a missing directory inside the root still ends outside it.
    let sneaky = root.join("missing/../../outside.png");
    assert_eq!(
        read_error(&sandbox, &sneaky),
        format!("outside sandbox roots: {}", sneaky.display())
    );
    // Inside the root, missing is just missing.
    let inside = root.join("sub/missing.jpeg");
    assert_eq!(
        read_error(&sandbox, &inside),
        format!("file not found: {}", inside.display())
    );
    // With no roots, missing is missing everywhere.
    assert_eq!(
        read_error(&Sandbox::allow_all(), &missing),
        format!("file not found: {}", missing.display())
    );
}

#[test]
fn paths_in_errors_cannot_forge_lines() {
    // Found by the arrow_batch fuzz target: a path holding a newline came back verbatim in the
    // error column (and from there in logs and CSV output).
    let (_dir, root) = sandbox_layout("newline");
    let sandbox = Sandbox::with_roots([&root]).unwrap();
    let path = format!("{}/a\nfake: row\r\u{1b}[2J.jpeg", root.display());
    let error = sandbox.read(&path, &Limits::default()).unwrap_err().0;
    assert_eq!(
        error,
        format!(
            "file not found: {}/a\\nfake: row\\r\\u{{1b}}[2J.jpeg",
            root.display()
        )
    );
    let long = format!("{}/{}", root.display(), "x".repeat(4000));
    let error = sandbox.read(&long, &Limits::default()).unwrap_err().0;
    assert!(error.len() < 700 && error.contains("..."), "{error}");
    assert!(!error.contains('\n'));
}

#[test]
fn a_corrupt_jpeg_does_not_poison_the_next_decode_on_the_thread() {
    // The JPEG decoder handle is kept per thread; after a corrupt image it must still decode
    // the next good one (seen as "Unsupported marker type" on good images after a bad one).
    let good = jpeg_bomb(16, 16, turbojpeg::PixelFormat::GRAY);
    let limits = Limits::default();
    for bad in [
        &b"\xff\xd8\xff garbage"[..],
        &good[..good.len() / 2],
        &jpeg_bomb(65_000, 65_000, turbojpeg::PixelFormat::GRAY)[..],
    ] {
        assert!(decode_gray(bad, &limits, None).is_err());
        let decoded = decode_gray(&good, &limits, None).expect("good JPEG after a bad one");
        assert_eq!((decoded.image.width, decoded.image.height), (16, 16));
        assert!(decode_gray(bad, &limits, Some((4, 4))).is_err());
        decode_gray(&good, &limits, Some((4, 4))).expect("good JPEG (scaled) after a bad one");
    }
}

/// Found by the decode_png fuzz target (minimised by hand): a palette PNG whose PLTE chunk is
/// 49 bytes, not a multiple of 3, with a tRNS chunk, made png 0.18 panic while expanding the
/// palette (`range end index 3 out of range for slice of length 1`).
fn png_with_ragged_palette() -> Vec<u8> {
    let base = png_bomb(13, 9, 3);
    let (signature_and_ihdr, rest) = base.split_at(8 + 25);
    let palette: Vec<u8> = (0..49u8).map(|i| i.wrapping_mul(37)).collect();
    let mut png = signature_and_ihdr.to_vec();
    png.extend(png_chunk(b"PLTE", &palette));
    png.extend(png_chunk(b"tRNS", &[0, 32, 64, 96, 128, 160, 255, 255]));
    png.extend_from_slice(rest);
    png
}

#[test]
fn png_with_a_ragged_palette_is_an_error_not_a_panic() {
    use arrow::array::Array;
    let png = png_with_ragged_palette();
    let error = decode_gray(&png, &Limits::default(), None).unwrap_err().0;
    assert_eq!(
        error,
        "corrupt PNG: palette of 49 bytes (must be 3 per entry, at most 256 entries)"
    );
    // Through a kernel, next to a good image.
    let good = png_bomb(4, 4, 0);
    let column = cxrlake::core::ImageColumn::from_bytes(&[png.as_slice(), good.as_slice()]);
    let batch = cxrlake::core::decode_batch(&column, &Default::default()).unwrap();
    let errors = batch.column_by_name("error").unwrap();
    assert!(errors.is_valid(0) && errors.is_null(1));
}

#[test]
fn an_empty_root_list_or_an_empty_root_is_refused_never_allow_all() {
    let no_roots: [&str; 0] = [];
    for error in [
        Sandbox::with_roots(no_roots).unwrap_err(),
        Sandbox::with_roots([""]).unwrap_err(),
        Sandbox::with_roots(["", ""]).unwrap_err(),
        Sandbox::resolve(Some(&[])).unwrap_err(),
        Sandbox::resolve(Some(&[String::new()])).unwrap_err(),
    ] {
        let message = error.to_string();
        assert!(
            message.contains("no sandbox roots") || message.contains("empty path"),
            "{message}"
        );
    }
    // One empty root among good ones is still refused: it is a typo, not a wildcard.
    let (_dir, root) = sandbox_layout("empty-root");
    assert!(Sandbox::with_roots([root.to_str().unwrap(), ""]).is_err());
}

#[test]
fn outside_the_roots_every_kind_of_path_gets_the_same_answer() {
    let (dir, root) = sandbox_layout("oracle");
    let sandbox = Sandbox::with_roots([&root]).unwrap();
    let outside_file = dir.path().join("outside.png");
    let outside_dir = dir.path().join("outside-dir");
    std::fs::create_dir(&outside_dir).unwrap();
    // Symlinks inside the root pointing at: an existing file, a missing file, a path below a
    // regular file ("not a directory"), a directory, a missing folder, a loop pair.
    let targets = [
        ("to-file", outside_file.clone()),
        ("to-missing", dir.path().join("missing.png")),
        ("to-below-file", outside_file.join("x.png")),
        ("to-dir", outside_dir.clone()),
        ("to-missing-dir", dir.path().join("gone/deeper/x.png")),
        ("loop-a", root.join("loop-b")),
        ("loop-b", root.join("loop-a")),
    ];
    for (name, target) in &targets {
        std::os::unix::fs::symlink(target, root.join(name)).unwrap();
    }
    let mut probes: Vec<PathBuf> = vec![
        outside_file.clone(),
        outside_file.join("x.png"),
        outside_dir.clone(),
        dir.path().join("missing.png"),
        root.join("../outside.png"),
        root.join("sub/../../outside-dir"),
        root.join("to-missing-dir/../x.png"),
        PathBuf::from("/dev/null"),
        PathBuf::from("/proc/self/root/etc/passwd"),
    ];
    probes.extend(
        targets
            .iter()
            .filter(|(name, _)| !name.starts_with("loop"))
            .map(|(name, _)| root.join(name)),
    );
    for probe in &probes {
        assert_eq!(
            read_error(&sandbox, probe),
            format!("outside sandbox roots: {}", probe.display()),
            "{}",
            probe.display()
        );
    }
    // Inside the root, a dangling link is reported as missing, as before.
    std::os::unix::fs::symlink(root.join("nothing.png"), root.join("dangling-inside")).unwrap();
    let dangling = root.join("dangling-inside");
    assert_eq!(
        read_error(&sandbox, &dangling),
        format!("file not found: {}", dangling.display())
    );
}

// ---------------------------------------------------------------------------------------------
// Memory per image: ancillary PNG chunks and DICOM element lengths

/// A valid 256x256 gray PNG whose iCCP profile inflates to `inflated` bytes.
fn png_iccp_bomb(inflated: usize) -> Vec<u8> {
    use std::io::Write;
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let block = vec![0u8; 1 << 20];
    for _ in 0..inflated >> 20 {
        zlib.write_all(&block).unwrap();
    }
    let mut iccp = b"bomb\0\0".to_vec();
    iccp.extend(zlib.finish().unwrap());
    let mut image = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    image.write_all(&vec![0u8; 256 * 257]).unwrap();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&256u32.to_be_bytes());
    ihdr.extend_from_slice(&256u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(b"iCCP", &iccp));
    png.extend(png_chunk(b"IDAT", &image.finish().unwrap()));
    png.extend(png_chunk(b"IEND", b""));
    png
}

#[test]
fn a_png_iccp_bomb_decodes_within_the_documented_bound() {
    let bomb = png_iccp_bomb(256 << 20);
    let (result, peak) = peak_allocation(|| decode_gray(&bomb, &Limits::default(), None));
    let decoded = result.expect("the profile is skipped, the image decodes");
    assert_eq!((decoded.image.width, decoded.image.height), (256, 256));
    let bound = cxrlake::core::decode::png_memory_bound(bomb.len() as u64, 256, 256) as usize;
    assert!(
        peak <= bound,
        "decoding allocated {peak} bytes, bound {bound}"
    );
}

#[test]
fn a_dicom_element_longer_than_the_file_is_refused_without_allocating() {
    let mut file = vec![0u8; 128];
    file.extend(b"DICM");
    let ts = b"1.2.840.10008.1.2.1\0";
    file.extend([0x02, 0x00, 0x10, 0x00, b'U', b'I']);
    file.extend((ts.len() as u16).to_le_bytes());
    file.extend(ts);
    // (0009,0010) OB declaring 4 GiB - 16 bytes, in a file of 180 bytes.
    file.extend([0x09, 0x00, 0x10, 0x00, b'O', b'B', 0, 0]);
    file.extend(0xFFFF_FFF0u32.to_le_bytes());
    file.extend([0u8; 16]);
    assert_refused_cheaply(
        &file,
        "truncated DICOM: element (0009,0010) declares 4294967280 bytes but only 16 remain",
    );
}
