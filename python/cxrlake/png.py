"""The one PNG encoder of the Python side: an 8-bit grayscale image (signature, ``IHDR``, one
zlib-compressed ``IDAT`` of unfiltered rows, ``IEND``), with the standard library.

Its users are the report's thumbnails (`cxrlake.lakehouse.report.png`) and the review app's
DICOM films (`cxrlake.review.images`). The wheel's dependencies hold no imaging library (Pillow
is a ``train`` and ``dev`` extra only), and the core's PNG encoder renders heatmap overlays
only (docs/architecture.md, "Report charts").
"""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def grayscale_png(pixels: bytes, width: int, height: int, *, level: int = 6) -> bytes:
    """An 8-bit grayscale PNG of ``width x height`` row-major pixels (no filter; ``level``: the
    zlib compression level)."""
    if len(pixels) != width * height:
        raise ValueError(f"{len(pixels)} pixel bytes for a {width}x{height} image")
    rows = b"".join(b"\0" + pixels[y * width : (y + 1) * width] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows, level))
        + _chunk(b"IEND", b"")
    )


__all__ = ["grayscale_png"]
