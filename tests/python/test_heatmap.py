"""The map a reader sees (`cxrlake.heatmap`): refinement, hottest region, display rule, and the
model card section that reports its occlusion test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrlake.heatmap import DISPLAY_FLOOR, display_alpha, hottest_region, refine, refine_grid

REPO = Path(__file__).resolve().parents[2]


def _map(values: np.ndarray) -> dict:
    return {"rows": values.shape[0], "cols": values.shape[1], "values": values.ravel().tolist()}


def test_refine_upsamples_between_cell_centres_and_keeps_the_mean():
    rng = np.random.default_rng(0)
    coarse = rng.normal(size=(5, 5))
    fine = refine(_map(coarse))
    assert (fine["rows"], fine["cols"]) == (20, 20) and len(fine["values"]) == 400
    unsmoothed = refine_grid(coarse, sigma=0)
    # constant within the outer half cells (edges clamped), bilinear inside
    assert unsmoothed[0, 0] == pytest.approx(coarse[0, 0])
    assert unsmoothed[-1, -1] == pytest.approx(coarse[-1, -1])
    # smoothing removes creases but not the mass: the means stay close
    assert np.mean(fine["values"]) == pytest.approx(coarse.mean(), abs=0.05)
    assert refine(None) is None
    with pytest.raises(ValueError, match="holds 3 values"):
        refine({"rows": 2, "cols": 2, "values": [1, 2, 3]})


def test_the_hottest_region_can_sit_between_coarse_cells():
    # evidence on the corner shared by four coarse cells: the hottest coarse cell is one of
    # them, the refined window straddles all four
    coarse = np.zeros((5, 5))
    coarse[1:3, 1:3] = 1.0
    fine = refine(_map(coarse))
    region = hottest_region(fine, 4)
    assert (region["rows"], region["cols"]) == (4, 4)
    assert (region["row"], region["col"]) == (6, 6)
    assert region["box"] == pytest.approx([0.3, 0.3, 0.5, 0.5])
    one_cell = hottest_region(_map(coarse), 1)
    assert (one_cell["row"], one_cell["col"]) == (1, 1) and one_cell["mean"] == 1.0


def test_display_alpha_is_zero_below_the_floor():
    fine = np.array([[0.0, DISPLAY_FLOOR * 0.99, 0.7, 1.0], [-1.0, 0.2, 0.4, 0.5]])
    alpha = display_alpha(fine)
    assert alpha[0, 0] == alpha[0, 1] == alpha[1, 0] == alpha[1, 1] == alpha[1, 2] == 0.0
    assert 0 < alpha[0, 2] < alpha[0, 3] == pytest.approx(0.55)
    assert display_alpha(-np.ones((2, 2))).max() == 0.0


def test_the_card_keeps_the_grid_section_and_says_what_was_measured():
    from cxrlake.training.card import PRESERVED_SECTIONS, _preserved

    title = "## Heatmap: the grid the reader sees"
    assert title in PRESERVED_SECTIONS
    card = (REPO / "MODEL_CARD.md").read_text()
    assert _preserved(card).count(title) == 1
    section = card[card.index(title) :].split("\n## ", 1)[0]
    for words in ("benches/heatmap_occlusion.py", "20x20", "hottest", "random"):
        assert words in section, words
