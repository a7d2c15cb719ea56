"""The map a reader sees: the model's class-activation map upsampled and smoothed, and its
hottest region.

The model's ``heatmap`` output is coarse (5x5 cells for the 160 px model: one cell is a fifth of
the film per side). `refine` upsamples it ``factor`` times per side with the rule the overlay PNG
uses (bilinear between cell centres, edges clamped: ``sample`` in ``src/core/kernels/overlay.rs``)
and smooths it with a Gaussian of ``sigma`` fine cells, which removes the creases bilinear
interpolation leaves at the cell centres. `hottest_region` is the square window, two coarse cells
wide, with the largest mean of the fine map: it can sit anywhere on the fine grid, not only on the
coarse cells. The occlusion test of ``benches/heatmap_occlusion.py`` (figures in MODEL_CARD.md)
measures that grid: hiding the hottest region (blurred) moves P(pneumonia) more than hiding a
random region of the same size.

Display rule (`DISPLAY_FLOOR`): the review app and the overlay PNG are transparent where the map is
below that fraction of its largest value, so a film keeps its grey levels everywhere but in the
regions that drove the score.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np

from cxrlake.columns import Heatmap

#: Fine cells per coarse cell and side in the shipped grid (5x5 -> 20x20).
REFINE_FACTOR = 4
#: Gaussian smoothing of the fine grid, in fine cells.
REFINE_SIGMA = 1.0
#: Below this fraction of the map's largest value the overlay is fully transparent.
DISPLAY_FLOOR = 0.4
#: Side of the hottest region, in fine cells: two model cells (64 px at the 160 px input: 40% of
#: each side, 16% of the film), the size the occlusion test of MODEL_CARD.md measured.
HOTTEST_SIDE = 2 * REFINE_FACTOR


class HottestRegion(TypedDict):
    """What `hottest_region` returns (fine cells, and the box as fractions of the image)."""

    row: int
    col: int
    rows: int
    cols: int
    mean: float
    box: list[float]


def _values(heatmap: Heatmap) -> np.ndarray:
    rows, cols = int(heatmap["rows"]), int(heatmap["cols"])
    values = np.asarray([np.nan if v is None else v for v in heatmap["values"]], dtype=np.float64)
    if rows <= 0 or cols <= 0 or values.size != rows * cols:
        raise ValueError(f"heatmap of {rows}x{cols} cells holds {values.size} values")
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0).reshape(rows, cols)


def _upsample_axis(grid: np.ndarray, out: int, axis: int) -> np.ndarray:
    """Bilinear between cell centres along ``axis`` to ``out`` samples, edges clamped."""
    cells = grid.shape[axis]
    g = np.clip((np.arange(out) + 0.5) / out * cells - 0.5, 0.0, cells - 1)
    lo = np.floor(g).astype(int)
    hi = np.minimum(lo + 1, cells - 1)
    frac = g - lo
    a, b = np.take(grid, lo, axis=axis), np.take(grid, hi, axis=axis)
    shape = [1, 1]
    shape[axis] = out
    blended: np.ndarray = a * (1 - frac.reshape(shape)) + b * frac.reshape(shape)
    return blended


def _blur_axis(grid: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    pad = [(0, 0), (0, 0)]
    pad[axis] = (radius, radius)
    padded = np.pad(grid, pad, mode="edge")
    out = np.zeros_like(grid)
    for i, w in enumerate(taps):
        out += w * np.take(padded, np.arange(i, i + grid.shape[axis]), axis=axis)
    return out


def refine_grid(
    values: np.ndarray, factor: int = REFINE_FACTOR, sigma: float = REFINE_SIGMA
) -> np.ndarray:
    """A ``(rows, cols)`` map upsampled to ``(rows * factor, cols * factor)`` and smoothed."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    rows, cols = values.shape
    fine = _upsample_axis(_upsample_axis(values, rows * factor, 0), cols * factor, 1)
    if sigma > 0:
        fine = _blur_axis(_blur_axis(fine, sigma, 0), sigma, 1)
    return fine


def refine(
    heatmap: Heatmap | None, factor: int = REFINE_FACTOR, sigma: float = REFINE_SIGMA
) -> Heatmap | None:
    """The shipped grid of a model map ``{"rows", "cols", "values"}``: the same form,
    ``factor`` times finer per side, values rounded to 6 significant digits; None for None."""
    if heatmap is None:
        return None
    fine = refine_grid(_values(heatmap), factor, sigma)
    return {
        "rows": int(fine.shape[0]),
        "cols": int(fine.shape[1]),
        "values": [float(f"{v:.6g}") for v in fine.ravel()],
    }


def hottest_region(fine: Heatmap, side_cells: int = HOTTEST_SIDE) -> HottestRegion:
    """The ``side_cells`` x ``side_cells`` window of a fine map with the largest mean.

    Returns ``row``, ``col`` (its top-left fine cell), ``rows``, ``cols`` (its size in fine
    cells), ``mean`` (the map's mean inside it) and ``box``: ``[left, top, right, bottom]`` as
    fractions of the image's width and height (the map covers the whole upright image).
    """
    grid = _values(fine)
    rows, cols = grid.shape
    k_r, k_c = min(side_cells, rows), min(side_cells, cols)
    # sums of every window through a summed-area table
    table = np.zeros((rows + 1, cols + 1))
    table[1:, 1:] = grid.cumsum(0).cumsum(1)
    sums = table[k_r:, k_c:] - table[:-k_r, k_c:] - table[k_r:, :-k_c] + table[:-k_r, :-k_c]
    r, c = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return {
        "row": int(r),
        "col": int(c),
        "rows": k_r,
        "cols": k_c,
        "mean": float(sums[r, c] / (k_r * k_c)),
        "box": [c / cols, r / rows, (c + k_c) / cols, (r + k_r) / rows],
    }


def display_alpha(fine: np.ndarray, floor: float = DISPLAY_FLOOR, top: float = 0.55) -> np.ndarray:
    """Overlay opacity per cell: 0 below ``floor`` x the largest positive value, rising to
    ``top`` at the largest (the review app's rule, ``app.js`` ``drawHeatmap``)."""
    peak = float(fine.max()) if fine.size else 0.0
    if peak <= 0:
        return np.zeros_like(fine)
    t = np.clip((fine / peak - floor) / (1 - floor), 0.0, 1.0)
    return top * t
