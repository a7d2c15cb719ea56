"""The report's thumbnails: grayscale pixels downscaled by block averaging and encoded as PNG
by `cxrlake.png` (docs/architecture.md, "Report charts")."""

from __future__ import annotations

import numpy as np

from cxrlake.png import grayscale_png


def png_gray(pixels: np.ndarray) -> bytes:
    """Encode a 2-D uint8 array as a grayscale PNG (`cxrlake.png`, zlib level 9)."""
    height, width = pixels.shape
    return grayscale_png(pixels.tobytes(), width, height, level=9)


def thumbnail(pixels: bytes, width: int, height: int, max_side: int = 160) -> np.ndarray:
    """Downscale 8-bit grayscale pixels by block averaging to at most ``max_side`` pixels."""
    img = np.frombuffer(pixels, dtype=np.uint8).reshape(height, width)
    factor = max(1, int(np.ceil(max(width, height) / max_side)))
    h, w = (height // factor) * factor, (width // factor) * factor
    img = img[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
