"""The report's thumbnails: grayscale pixels downscaled and encoded as PNG.

The encoder is the few lines PNG needs for one 8-bit grayscale image (signature, ``IHDR``, one
zlib-compressed ``IDAT`` of unfiltered rows, ``IEND``) with the standard library: the wheel's
dependencies hold no imaging library (Pillow is a ``train`` and ``dev`` extra only), and the
core's PNG encoder renders heatmap overlays only (docs/architecture.md, "Report charts").
"""

from __future__ import annotations

import struct
import zlib

import numpy as np


def png_gray(pixels: np.ndarray) -> bytes:
    """Encode a 2-D uint8 array as a grayscale PNG."""
    height, width = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def thumbnail(pixels: bytes, width: int, height: int, max_side: int = 160) -> np.ndarray:
    """Downscale 8-bit grayscale pixels by block averaging to at most ``max_side`` pixels."""
    img = np.frombuffer(pixels, dtype=np.uint8).reshape(height, width)
    factor = max(1, int(np.ceil(max(width, height) / max_side)))
    h, w = (height // factor) * factor, (width // factor) * factor
    img = img[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
