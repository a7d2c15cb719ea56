"""The one grayscale PNG encoder (`cxrlake.png`), read back by Pillow."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from cxrlake.png import grayscale_png


@pytest.mark.parametrize("level", [0, 6, 9])
def test_grayscale_png_round_trips_through_pillow(level):
    width, height = 37, 23  # odd sizes: rows are not padded
    pixels = bytes((x * 7 + y * 13) % 256 for y in range(height) for x in range(width))
    image = Image.open(io.BytesIO(grayscale_png(pixels, width, height, level=level)))
    assert image.mode == "L" and image.size == (width, height)
    assert image.tobytes() == pixels


def test_grayscale_png_refuses_pixels_that_do_not_fill_the_image():
    with pytest.raises(ValueError, match="99 pixel bytes for a 10x10 image"):
        grayscale_png(bytes(99), 10, 10)
