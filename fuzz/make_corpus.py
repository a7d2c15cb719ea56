"""Generate the seed corpus of the cxrlake fuzz targets: small valid and broken JPEG/PNG files.

Usage: python fuzz/make_corpus.py OUT_DIR

Writes OUT_DIR/decode_jpeg/, OUT_DIR/decode_png/, OUT_DIR/arrow_batch/ and OUT_DIR/decode_dicom/.
Everything is made by code (no image is copied from anywhere, except the DICOM seeds: pydicom's
small test files, when pydicom is installed) and is deterministic, so the corpus is the same on
every machine. Valid seeds cover the formats the decoder must accept (baseline/progressive JPEG,
gray, RGB, CMYK, chroma subsampling, EXIF orientation; PNG of every colour type and bit depth,
palette with tRNS, Adam7 interlacing); broken seeds cover what hostile folders contain
(truncation, bad markers and CRCs, lying lengths, decompression-bomb headers, unsupported codings).

The PNG writer is plain Python (zlib) because Pillow cannot write interlaced or 1/2/4-bit
grayscale-with-filters PNGs; JPEGs come from Pillow (libjpeg) and are then mutated bytewise.
"""

from __future__ import annotations

import io
import random
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image

# Separator of rows in an `arrow_batch` input; must match fuzz/fuzz_targets/arrow_batch.rs.
ROW_SEPARATOR = b"\x00CXR\x00"
# A row that is exactly this becomes a NULL in the Arrow array.
NULL_ROW = b"\x00NULL\x00"

# Decompression-bomb sizes from issue 6.
BOMB_PNG = (60_000, 60_000)
BOMB_JPEG = (65_000, 65_000)


# ---------------------------------------------------------------------------------------------
# Synthetic pictures


def xray_like(width: int, height: int, seed: int) -> list[list[int]]:
    """An 8-bit grayscale picture with a bright body, dark lungs and noise (rows of ints 0..255)."""
    rng = random.Random(seed)
    rows = []
    for y in range(height):
        row = []
        for x in range(width):
            cx = (x - width / 2) / max(width, 1)
            cy = (y - height / 2) / max(height, 1)
            lung = 1.0 if 0.08 < abs(cx) < 0.35 and abs(cy) < 0.35 else 0.0
            value = 200 - 120 * lung - 60 * (cx * cx + cy * cy) + rng.randint(-12, 12)
            row.append(max(0, min(255, int(value))))
        rows.append(row)
    return rows


def pil_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    gray = xray_like(width, height, seed)
    flat = bytes(v for row in gray for v in row)
    image = Image.frombytes("L", (width, height), flat)
    if mode == "L":
        return image
    if mode == "RGB":
        r = image
        g = image.point(lambda v: (v * 7 + 13) % 256)
        b = image.point(lambda v: 255 - v)
        return Image.merge("RGB", (r, g, b))
    return image.convert(mode)


# ---------------------------------------------------------------------------------------------
# PNG writer (any colour type, bit depth, filter, Adam7)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
ADAM7 = [  # (x0, y0, dx, dy) of the seven passes
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
]


def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    if crc is None:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def ihdr(width: int, height: int, depth: int, color: int, interlace: int = 0) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, interlace))


def pack_row(samples: list[int], depth: int) -> bytes:
    if depth == 8:
        return bytes(samples)
    if depth == 16:
        return b"".join(struct.pack(">H", s) for s in samples)
    out = bytearray()
    per_byte = 8 // depth
    for i in range(0, len(samples), per_byte):
        byte = 0
        group = samples[i : i + per_byte]
        for j, s in enumerate(group):
            byte |= (s & ((1 << depth) - 1)) << (8 - depth * (j + 1))
        out.append(byte)
    return bytes(out)


def filter_row(kind: int, row: bytes, prev: bytes, bpp: int) -> bytes:
    """PNG filter types 0..4 applied to one scanline (bpp = bytes per complete pixel, >= 1)."""
    out = bytearray()
    for i, value in enumerate(row):
        left = row[i - bpp] if i >= bpp else 0
        up = prev[i] if prev else 0
        up_left = prev[i - bpp] if prev and i >= bpp else 0
        if kind == 0:
            pred = 0
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = up
        elif kind == 3:
            pred = (left + up) // 2
        else:
            p = left + up - up_left
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
            pred = left if pa <= pb and pa <= pc else (up if pb <= pc else up_left)
        out.append((value - pred) & 0xFF)
    return bytes(out)


def scanlines(pixels: list[list[list[int]]], depth: int, color: int, seed: int) -> bytes:
    """Filtered scanlines of `pixels` (rows of pixels of samples), one random filter per row."""
    rng = random.Random(seed)
    bpp = max(1, CHANNELS[color] * depth // 8)
    prev = b""
    out = bytearray()
    for row in pixels:
        raw = pack_row([s for px in row for s in px], depth)
        kind = rng.randint(0, 4)
        out.append(kind)
        out += filter_row(kind, raw, prev, bpp)
        prev = raw
    return bytes(out)


def png_pixels(width: int, height: int, depth: int, color: int, seed: int) -> list[list[list[int]]]:
    gray = xray_like(width, height, seed)
    top = (1 << depth) - 1
    rows = []
    for y in range(height):
        row = []
        for x in range(width):
            g = gray[y][x] * top // 255
            if color == 0:
                row.append([g])
            elif color == 2:
                row.append([g, (g * 3) % (top + 1), top - g])
            elif color == 3:
                row.append([(x + y) % min(top + 1, 16)])
            elif color == 4:
                row.append([g, (x * top) // max(width - 1, 1)])
            else:
                row.append([g, top - g, (g // 2), (y * top) // max(height - 1, 1)])
        rows.append(row)
    return rows


def png_image_data(width, height, depth, color, interlace, seed) -> bytes:
    pixels = png_pixels(width, height, depth, color, seed)
    if not interlace:
        return scanlines(pixels, depth, color, seed)
    data = bytearray()
    for i, (x0, y0, dx, dy) in enumerate(ADAM7):
        sub = [row[x0::dx] for row in pixels[y0::dy]]
        sub = [row for row in sub if row]
        if sub:
            data += scanlines(sub, depth, color, seed + i)
    return bytes(data)


def make_png(
    width: int,
    height: int,
    depth: int = 8,
    color: int = 0,
    interlace: int = 0,
    seed: int = 0,
    extra: list[bytes] | None = None,
    idat_split: int = 1,
) -> bytes:
    data = zlib.compress(png_image_data(width, height, depth, color, interlace, seed), 9)
    out = PNG_SIGNATURE + ihdr(width, height, depth, color, interlace)
    if color == 3:
        palette = bytes(c for i in range(16) for c in (i * 16, 255 - i * 16, (i * 37) % 256))
        out += chunk(b"PLTE", palette)
        out += chunk(b"tRNS", bytes(range(0, 256, 32)))
    for extra_chunk in extra or []:
        out += extra_chunk
    step = max(1, -(-len(data) // idat_split))
    for start in range(0, len(data), step):
        out += chunk(b"IDAT", data[start : start + step])
    return out + chunk(b"IEND", b"")


def tiff_orientation(orientation: int, little_endian: bool = False) -> bytes:
    """A TIFF-structured EXIF blob with IFD0 holding only the orientation tag."""
    e = "<" if little_endian else ">"
    head = (b"II" if little_endian else b"MM") + struct.pack(e + "HI", 42, 8)
    entry = struct.pack(e + "HHIHH", 0x0112, 3, 1, orientation, 0)
    return head + struct.pack(e + "H", 1) + entry + struct.pack(e + "I", 0)


def png_seeds() -> Iterator[tuple[str, bytes]]:
    valid_depths = {0: [1, 2, 4, 8, 16], 2: [8, 16], 3: [1, 2, 4, 8], 4: [8, 16], 6: [8, 16]}
    for color, depths in valid_depths.items():
        for depth in depths:
            for interlace in (0, 1):
                name = f"valid_c{color}_d{depth}_i{interlace}"
                yield name, make_png(13, 9, depth, color, interlace, seed=color * 31 + depth)
    yield "valid_1x1", make_png(1, 1)
    yield "valid_wide_1px", make_png(64, 1, interlace=1)
    yield "valid_tall_1px", make_png(1, 64, interlace=1)
    yield "valid_idat_split", make_png(24, 24, color=2, idat_split=5)
    yield "valid_exif_rot6", make_png(12, 7, extra=[chunk(b"eXIf", tiff_orientation(6))])
    yield "valid_exif_rot8_le", make_png(12, 7, extra=[chunk(b"eXIf", tiff_orientation(8, True))])
    yield "valid_gama_srgb", make_png(8, 8, extra=[chunk(b"gAMA", struct.pack(">I", 45455))])
    with io.BytesIO() as buf:
        pil_image("RGB", 32, 24, 5).save(buf, "PNG")
        yield "valid_pillow_rgb", buf.getvalue()

    base = make_png(16, 16, color=2, seed=3)
    yield "broken_truncated_half", base[: len(base) // 2]
    yield "broken_truncated_header", base[:20]
    yield "broken_signature_only", PNG_SIGNATURE
    yield "broken_no_iend", base[:-12]
    bad_crc = bytearray(base)
    bad_crc[29] ^= 0xFF  # last byte of the IHDR CRC
    yield "broken_ihdr_crc", bytes(bad_crc)
    bad_data = bytearray(base)
    bad_data[45] ^= 0x5A  # inside the compressed IDAT stream
    yield "broken_idat_bytes", bytes(bad_data)
    yield (
        "broken_empty_idat",
        PNG_SIGNATURE + ihdr(8, 8, 8, 0) + chunk(b"IDAT", b"") + chunk(b"IEND", b""),
    )
    yield "broken_no_idat", PNG_SIGNATURE + ihdr(8, 8, 8, 0) + chunk(b"IEND", b"")
    short = zlib.compress(b"\x00" * 20)
    yield (
        "broken_short_idat",
        PNG_SIGNATURE + ihdr(8, 8, 8, 0) + chunk(b"IDAT", short) + chunk(b"IEND", b""),
    )
    bad_filter = zlib.compress(bytes([7] + [0] * 8) * 8)
    yield (
        "broken_filter_type",
        PNG_SIGNATURE + ihdr(8, 8, 8, 0) + chunk(b"IDAT", bad_filter) + chunk(b"IEND", b""),
    )
    yield "broken_depth_combo", PNG_SIGNATURE + ihdr(8, 8, 16, 3) + chunk(b"IEND", b"")
    yield "broken_color_type", PNG_SIGNATURE + ihdr(8, 8, 8, 5) + chunk(b"IEND", b"")
    yield "broken_zero_width", PNG_SIGNATURE + ihdr(0, 8, 8, 0) + chunk(b"IEND", b"")
    yield (
        "broken_palette_missing",
        PNG_SIGNATURE
        + ihdr(4, 4, 8, 3)
        + chunk(b"IDAT", zlib.compress(bytes([0, 1, 2, 3, 4]) * 4))
        + chunk(b"IEND", b""),
    )
    lying_length = bytearray(base)
    lying_length[33:37] = struct.pack(">I", 0x7FFFFFFF)  # first IDAT claims 2 GiB
    yield "broken_idat_length_2gib", bytes(lying_length)
    for w, h in (BOMB_PNG, (2**31 - 1, 2**31 - 1), (1, 2**31 - 1), (100_001, 1000)):
        # A valid-looking header announcing a huge image, followed by a tiny zlib stream: the
        # decoder must refuse from the header, before allocating width*height bytes.
        bomb = PNG_SIGNATURE + ihdr(w, h, 8, 0) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        yield f"bomb_{w}x{h}", bomb + chunk(b"IEND", b"")
    bomb16 = PNG_SIGNATURE + ihdr(*BOMB_PNG, 16, 6) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    yield "bomb_rgba16", bomb16 + chunk(b"IEND", b"")
    yield (
        "broken_exif_loop",
        make_png(
            4, 4, extra=[chunk(b"eXIf", b"MM\x00\x2a\x00\x00\x00\x08\xff\xff" + b"\x00" * 12)]
        ),
    )


# ---------------------------------------------------------------------------------------------
# JPEG seeds (Pillow/libjpeg) and bytewise mutations


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    with io.BytesIO() as buf:
        image.save(buf, "JPEG", **options)
        return buf.getvalue()


def exif_app1(orientation: int, little_endian: bool = False) -> bytes:
    body = b"Exif\x00\x00" + tiff_orientation(orientation, little_endian)
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, start, end) of each marker segment before the first SOS (start at the 0xFF)."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        yield marker, pos, pos + 2 + length
        if marker == 0xDA:
            return
        pos += 2 + length


def find_segment(data: bytes, wanted: Callable[[int], bool]) -> tuple[int, int, int]:
    return next(s for s in segments(data) if wanted(s[0]))


def with_sof_size(data: bytes, width: int, height: int) -> bytes:
    _, start, _ = find_segment(data, lambda m: 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC))
    out = bytearray(data)
    out[start + 5 : start + 9] = struct.pack(">HH", height, width)
    return bytes(out)


def with_marker(data: bytes, old: Callable[[int], bool], new: int) -> bytes:
    _, start, _ = find_segment(data, old)
    out = bytearray(data)
    out[start + 1] = new
    return bytes(out)


def without_segments(data: bytes, drop: Callable[[int], bool]) -> bytes:
    out = bytearray(data[:2])
    last = 2
    for marker, start, end in segments(data):
        if marker == 0xDA:
            last = start
            break
        if not drop(marker):
            out += data[start:end]
        last = end
    return bytes(out) + data[last:]


def jpeg_seeds() -> Iterator[tuple[str, bytes]]:
    gray = pil_image("L", 24, 16, 1)
    rgb = pil_image("RGB", 24, 16, 2)
    yield "valid_gray_baseline", jpeg_bytes(gray, quality=80)
    yield "valid_gray_progressive", jpeg_bytes(gray, quality=80, progressive=True)
    for subsampling in (0, 1, 2):
        yield f"valid_rgb_sub{subsampling}", jpeg_bytes(rgb, quality=75, subsampling=subsampling)
    yield "valid_rgb_progressive", jpeg_bytes(rgb, progressive=True, optimize=True)
    yield "valid_cmyk", jpeg_bytes(pil_image("CMYK", 16, 16, 3), quality=70)
    yield "valid_odd_size", jpeg_bytes(pil_image("RGB", 17, 3, 4), subsampling=2)
    yield "valid_1x1", jpeg_bytes(pil_image("L", 1, 1, 5))
    yield "valid_restart_markers", jpeg_bytes(rgb, restart_marker_blocks=1)
    for orientation in (3, 6, 8):
        base = jpeg_bytes(rgb if orientation != 8 else gray)
        yield f"valid_exif_rot{orientation}", base[:2] + exif_app1(orientation) + base[2:]
    base = jpeg_bytes(gray)
    yield "valid_exif_le_rot5", base[:2] + exif_app1(5, little_endian=True) + base[2:]
    yield "valid_icc", jpeg_bytes(rgb, icc_profile=b"\x00" * 128)

    base = jpeg_bytes(rgb, quality=75)
    prog = jpeg_bytes(rgb, progressive=True)
    yield "broken_truncated_half", base[: len(base) // 2]
    yield "broken_truncated_progressive", prog[: len(prog) * 2 // 3]
    sos = find_segment(base, lambda m: m == 0xDA)
    yield "broken_truncated_after_sos", base[: sos[2]]
    yield "broken_truncated_header", base[:40]
    yield "broken_soi_only", b"\xff\xd8"
    yield "broken_soi_eoi", b"\xff\xd8\xff\xd9"
    yield "broken_no_eoi", base[:-2]
    yield "broken_garbage_tail", base + b"\x00\xff\x13" * 20
    yield "broken_lossless_sof3", with_marker(base, lambda m: m == 0xC0, 0xC3)
    yield "broken_arithmetic_sof9", with_marker(base, lambda m: m == 0xC0, 0xC9)
    yield "broken_hierarchical_sof5", with_marker(base, lambda m: m == 0xC0, 0xC5)
    yield "broken_no_dht", without_segments(base, lambda m: m == 0xC4)
    yield "broken_no_dqt", without_segments(base, lambda m: m == 0xDB)
    yield "broken_no_sof", without_segments(base, lambda m: 0xC0 <= m <= 0xC2)
    dqt = find_segment(base, lambda m: m == 0xDB)
    bad_table = bytearray(base)
    bad_table[dqt[1] + 4] = 0x07  # quantisation table id 7
    yield "broken_dqt_id", bytes(bad_table)
    short_len = bytearray(base)
    short_len[dqt[1] + 2 : dqt[1] + 4] = b"\x00\x01"  # segment length < 2
    yield "broken_segment_len_1", bytes(short_len)
    long_len = bytearray(base)
    long_len[dqt[1] + 2 : dqt[1] + 4] = b"\xff\xff"  # segment runs past the end of the file
    yield "broken_segment_len_ffff", bytes(long_len)
    sof = find_segment(base, lambda m: m == 0xC0)
    zero_components = bytearray(base)
    zero_components[sof[1] + 9] = 0
    yield "broken_sof_zero_components", bytes(zero_components)
    many_components = bytearray(base)
    many_components[sof[1] + 9] = 255
    yield "broken_sof_255_components", bytes(many_components)
    sampling = bytearray(base)
    sampling[sof[1] + 11] = 0x00  # sampling factors 0x0
    yield "broken_sof_sampling_zero", bytes(sampling)
    precision = bytearray(base)
    precision[sof[1] + 4] = 12  # 12-bit samples
    yield "broken_sof_precision_12", bytes(precision)
    yield "broken_zero_width", with_sof_size(base, 0, 16)
    yield (
        "broken_exif_bad_offset",
        base[:2] + (b"\xff\xe1\x00\x14Exif\x00\x00MM\x00\x2a\xff\xff\xff\xf0\x00\x00") + base[2:],
    )
    yield (
        "broken_exif_truncated_ifd",
        base[:2]
        + (b"\xff\xe1\x00\x18Exif\x00\x00II\x2a\x00\x08\x00\x00\x00\xff\xff\x12\x01")
        + base[2:],
    )
    yield "broken_app1_len_past_end", b"\xff\xd8\xff\xe1\xff\xf0Exif\x00\x00MM"
    yield (
        "broken_adobe_app14_gray",
        base[:2] + (b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x02") + base[2:],
    )
    for w, h in (BOMB_JPEG, (65_535, 65_535), (65_535, 1), (10_001, 10_001)):
        # Valid JPEG with the SOF patched to announce a huge image: refuse from the header.
        yield f"bomb_{w}x{h}", with_sof_size(base, w, h)
    yield "bomb_progressive_65000", with_sof_size(prog, *BOMB_JPEG)
    yield "bomb_cmyk_65000", with_sof_size(jpeg_bytes(pil_image("CMYK", 16, 16, 3)), *BOMB_JPEG)


# ---------------------------------------------------------------------------------------------
# Arrow batch seeds: rows joined by ROW_SEPARATOR after a one-byte header (see arrow_batch.rs)


def arrow_batch_seeds(
    jpegs: dict[str, bytes], pngs: dict[str, bytes]
) -> Iterator[tuple[str, bytes]]:
    mixes = {
        "good_mix": [jpegs["valid_rgb_sub2"], pngs["valid_c0_d8_i0"], jpegs["valid_exif_rot6"]],
        "nulls_and_empty": [NULL_ROW, b"", jpegs["valid_gray_baseline"], NULL_ROW],
        "bombs": [jpegs["bomb_65000x65000"], pngs["bomb_60000x60000"], pngs["valid_c3_d4_i1"]],
        "broken": [jpegs["broken_truncated_half"], pngs["broken_idat_bytes"], b"not an image"],
        "cmyk_16bit": [jpegs["valid_cmyk"], pngs["valid_c6_d16_i1"], pngs["valid_c2_d16_i0"]],
        "paths": [b"a.png", b"../outside.png", b"fifo", b"sub/b.png", b"/etc/passwd", b""],
        "links": [
            b"out_link.png",
            b"sub/in_link.png",
            b"etc/passwd",
            b"sub/../a.png",
            b"empty.jpeg",
        ],
    }
    for name, rows in mixes.items():
        for header in range(0, 256, 37):
            yield f"{name}_h{header}", bytes([header]) + ROW_SEPARATOR.join(rows)


def dicom_seeds() -> Iterator[tuple[str, bytes]]:
    """pydicom's small test files (every transfer syntax the core decodes, and the objects it
    refuses), without their 132-byte preamble and prefix (the decode_dicom target adds them), plus
    truncations and length corruptions. Empty when pydicom is not installed."""
    try:
        import pydicom
    except ImportError:
        return
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    rng = random.Random(14)
    for path in sorted(folder.glob("*.dcm")):
        data = path.read_bytes()
        if len(data) > 65_536 or data[128:132] != b"DICM":
            continue
        body = data[132:]
        yield path.stem, body
        yield f"{path.stem}_cut", body[: len(body) * 2 // 3]
        mutated = bytearray(body)
        for _ in range(4):
            at = rng.randrange(len(mutated))
            mutated[at] = rng.randrange(256)
        yield f"{path.stem}_mut", bytes(mutated)
    yield "CT_small_modality_lut", _with_modality_lut(folder / "CT_small.dcm")[132:]


def _with_modality_lut(path: Path) -> bytes:
    """A small CT with a Modality LUT Sequence (a 4096-entry, non-monotonic LUT) instead of its
    rescale: no small test file ships one."""
    import io

    import pydicom
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(path)
    del ds.RescaleSlope, ds.RescaleIntercept
    item = Dataset()
    item.add_new(0x00283002, "SS", [4096, -2048, 16])
    item.ModalityLUTType = "HU"
    item.add_new(0x00283006, "US", [(i * 16) ^ ((i & 0xFF) << 8) for i in range(4096)])
    ds.ModalityLUTSequence = [item]
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    jpegs = dict(jpeg_seeds())
    pngs = dict(png_seeds())
    targets = {
        "decode_jpeg": jpegs,
        "decode_png": pngs,
        "arrow_batch": dict(arrow_batch_seeds(jpegs, pngs)),
    }
    dicoms = dict(dicom_seeds())
    if dicoms:
        targets["decode_dicom"] = dicoms
    for target, seeds in targets.items():
        folder = out / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (folder / name).write_bytes(data)
        print(f"{target}: {len(seeds)} seeds in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
