"""The report's "Where the model looked" section: class-activation overlays of example images.

Examples are the most confident false positives and false negatives first, then the most
confident correct predictions of each class. Each card shows the image with the map stored with
its prediction (``gold.pneumonia_predictions.heatmap``, from the forward pass that gave the
probability; `cxrlake.explain` with the current model for rows stored without one) drawn over it
by the core (`cxrlake.render_overlay`: red pushes towards PNEUMONIA, blue towards NORMAL, colour
scale at the right, its ends at ``± scale`` logit units) and the hottest cell of the grid.

Overlays show the patient image, so they follow the report's ``thumbnails`` choice: without it
the section lists the same examples by image id with their hottest cell, and no image.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from dataclasses import dataclass, replace

import duckdb
import numpy as np

from cxrlake._api import explain, render_overlay
from cxrlake.columns import Heatmap
from cxrlake.exceptions import InvalidArgumentError
from cxrlake.lakehouse.report import queries
from cxrlake.lakehouse.report.queries import Row
from cxrlake.medallion import schemas
from cxrlake.model import Model

OVERLAY_SIZE = 200
"""Longer side of an overlay, in pixels."""


def pick_examples(preds: list[Row], per_kind: int = 2) -> list[tuple[str, Row]]:
    """``(kind, prediction)`` pairs: the ``per_kind`` most confident false positives, false
    negatives, true positives and true negatives, in that order (labelled predictions only)."""
    kinds: dict[str, Callable[[Row], bool]] = {
        "false positive": lambda r: r["true_label"] == 0 and r["predicted_label"] == 1,
        "false negative": lambda r: r["true_label"] == 1 and r["predicted_label"] == 0,
        "true positive": lambda r: r["true_label"] == 1 and r["predicted_label"] == 1,
        "true negative": lambda r: r["true_label"] == 0 and r["predicted_label"] == 0,
    }
    ranked = sorted(
        (r for r in preds if r.get("true_label") is not None),
        key=lambda r: (-(r["confidence_score"] or 0.0), r["image_id"]),
    )
    picked: list[tuple[str, Row]] = []
    for kind, test in kinds.items():
        picked += [(kind, r) for r in [r for r in ranked if test(r)][:per_kind]]
    return picked


def hottest_cell(heatmap: Heatmap | None) -> str:
    """``row r, col c of R x C`` (1-based, from the top-left of the upright image)."""
    if not heatmap or not heatmap.get("values"):
        return "no map"
    grid = np.asarray(heatmap["values"], np.float64).reshape(heatmap["rows"], heatmap["cols"])
    r, c = np.unravel_index(int(grid.argmax()), grid.shape)
    return f"row {r + 1}, col {c + 1} of {grid.shape[0]}x{grid.shape[1]}"


@dataclass(frozen=True)
class Explained:
    """The map of one example, its overlay PNG (with ``thumbnails``) or why there is none."""

    heatmap: Heatmap | None
    error: str | None
    overlay: bytes | None
    scale: float
    """Largest ``|value|`` of the map, in logit units (0 without a map)."""


def _maps(model: Model, data: list[bytes], stored: list[Heatmap | None]) -> list[Explained]:
    """The stored maps; for rows stored without one (older model or run), the current model's
    (`cxrlake.explain`), or why there is none."""
    maps = list(stored)
    errors: list[str | None] = [None] * len(data)
    missing = [k for k, m in enumerate(maps) if not m]
    if missing and not model.has_heatmap:
        for k in missing:
            errors[k] = "no stored map, and the current model has no heatmap output"
    elif missing:
        fresh = explain([data[k] for k in missing], model).to_pylist()
        for k, e in zip(missing, fresh, strict=True):
            maps[k], errors[k] = e["heatmap"], e["error"]
    return [
        Explained(m, error, None, float(np.abs(np.asarray(m["values"])).max()) if m else 0.0)
        for m, error in zip(maps, errors, strict=True)
    ]


def _with_overlay(image: bytes, e: Explained) -> Explained:
    """``e`` with the map drawn over ``image`` by the core (`cxrlake.render_overlay`)."""
    if not e.heatmap or e.error:
        return e
    try:
        return replace(e, overlay=render_overlay(image, e.heatmap, OVERLAY_SIZE))
    except InvalidArgumentError as exc:
        return replace(e, error=str(exc))


def overlay_section(con: duckdb.DuckDBPyConnection, preds: list[Row], thumbnails: bool) -> str:
    """The HTML of the section (heading included)."""
    out = ["<h2 id='overlays'>Where the model looked</h2>"]
    model = Model()
    picked = pick_examples(preds)
    if not picked:
        out.append("<p class='muted'>(no labelled predictions)</p>")
        return "\n".join(out)
    wanted = [(r["image_id"], r["content_sha256"]) for _, r in picked]
    content = queries.image_bytes(con, wanted)
    present = [(kind, r) for kind, r in picked if (r["image_id"], r["content_sha256"]) in content]
    data = [content[(r["image_id"], r["content_sha256"])] for _, r in present]
    explained = _maps(model, data, [r.get("heatmap") for _, r in present])
    if thumbnails:
        explained = [_with_overlay(d, e) for d, e in zip(data, explained, strict=True)]
    out.append(
        "<p class='muted'>Class-activation maps stored with each prediction (the current model, "
        f"{html.escape(model.name)} {html.escape(model.version)}, for rows stored without one): "
        "each of the 5x5 cells is its share of the logit (red towards PNEUMONIA, blue towards "
        "NORMAL). The grid is coarse: a cell covers a fifth of the image in each direction. "
        "Images: see <a href='#attribution'>Data attribution</a>.</p>"
    )
    examples = list(zip(present, explained, strict=True))
    out.append(_cards(examples) if thumbnails else _listed(examples))
    return "\n".join(out)


def _listed(examples: list[tuple[tuple[str, Row], Explained]]) -> str:
    """The examples by image id with their hottest cell (no patient image)."""
    rows = [
        f"<tr><td class='l'>{kind}</td><td class='l'>{html.escape(r['image_id'])}</td>"
        f"<td class='l'>{schemas.LABEL_NAMES[r['true_label']]}</td>"
        f"<td>{r['prediction_probability']:.3f}</td>"
        f"<td class='l'>{hottest_cell(e.heatmap) if not e.error else 'error'}</td></tr>"
        for (kind, r), e in examples
    ]
    return (
        "<table><tr><th class='l'>example</th><th class='l'>image_id</th>"
        "<th class='l'>true</th><th>P(PNEUMONIA)</th><th class='l'>hottest cell</th></tr>"
        + "".join(rows)
        + "</table><p class='muted'>Add <code>--thumbnails</code> to see the overlays.</p>"
    )


def _cards(examples: list[tuple[tuple[str, Row], Explained]]) -> str:
    """A card per example with its overlay."""
    cards = []
    for (kind, r), e in examples:
        if e.error or not e.overlay:
            continue
        b64 = base64.b64encode(e.overlay).decode("ascii")
        css = "bad" if kind.startswith("false") else "ok"
        cards.append(
            f"<div class='card'><img alt='{html.escape(r['image_id'])}' "
            f"src='data:image/png;base64,{b64}'>"
            f"<div class='{css}'>{kind}</div>"
            f"<div>P(PNEUMONIA) = {r['prediction_probability']:.3f}</div>"
            f"<div>hottest: {hottest_cell(e.heatmap)}</div>"
            f"<div class='muted'>scale ±{e.scale:.2f} logit</div></div>"
        )
    return "<div class='grid'>" + "".join(cards) + "</div>"
