"""Inline SVG charts for the HTML report, written by hand (docs/architecture.md, "Report charts",
says why no plotting library): a grouped bar chart, a histogram, lines in the unit square (ROC
curves, reliability diagrams) and time series. Each returns one ``<svg>`` element with a
``<title>``; the same data gives the same text.

Axes get "nice" ticks: 0 and multiples of 1, 2 or 5 times a power of ten, so counts read
0, 1, 2 ... on small data, 0, 50, 100 ... on larger, and never repeat or skip unevenly.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np

Point = tuple[float, float]
Line = tuple[list[Point], str, str]
"""A line of `unit_plot`: its points, its colour, and ``"o"`` to mark each point (``""``: none)."""

COLORS = {"NORMAL": "#2b8cbe", "PNEUMONIA": "#e34a33", "UNLABELLED": "#999999"}


def count_ticks(max_count: float, most: int = 6) -> list[int]:
    """Ticks for a count axis: 0 up to at least ``max_count`` in equal integer steps of 1, 2 or
    5 times a power of ten, at most ``most`` ticks (``[0, 1]`` when there is no data)."""
    top = max(1, math.ceil(max_count))
    magnitude = 1
    while True:
        for factor in (1, 2, 5):
            step = factor * magnitude
            if math.ceil(top / step) + 1 <= most:
                return [i * step for i in range(math.ceil(top / step) + 1)]
        magnitude *= 10


def _svg(width: int, height: int, body: str, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">'
        f"<title>{html.escape(title)}</title>{body}</svg>"
    )


def _axes(
    x0: int, y0: int, w: int, h: int, xlabel: str, ylabel: str, ticks: Sequence[float]
) -> str:
    """Axes with horizontal grid lines at ``ticks`` (the last tick is the top of the plot)."""
    top = ticks[-1]
    parts = [
        f'<line x1="{x0}" y1="{y0}" x2="{x0 + w}" y2="{y0}" stroke="#444"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0 - h}" stroke="#444"/>',
        f'<text x="{x0 + w / 2}" y="{y0 + 30}" text-anchor="middle">{html.escape(xlabel)}</text>',
        f'<text x="{x0 - 38}" y="{y0 - h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 {x0 - 38} {y0 - h / 2})">{html.escape(ylabel)}</text>',
    ]
    for v in ticks:
        y = y0 - h * v / top
        label = f"{v:.2f}" if isinstance(v, float) else str(v)
        parts.append(f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
        parts.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#eee"/>')
    return "".join(parts)


UNIT_TICKS = [0.0, 0.25, 0.5, 0.75, 1.0]


def bar_chart(groups: list[str], series: dict[str, list[int]], title: str) -> str:
    """Grouped bar chart: one group per split, one bar per label."""
    w, h, x0, y0 = 520, 260, 60, 220
    ticks = count_ticks(max([0] + [v for vals in series.values() for v in vals]))
    ymax = ticks[-1]
    body = [_axes(x0, y0, 440, 190, "dataset split", "images", ticks)]
    if not groups:
        body.append(f'<text x="{x0 + 220}" y="{y0 - 95}" text-anchor="middle">no images</text>')
    gw = 440 / max(1, len(groups))
    bw = gw * 0.8 / max(1, len(series))
    for gi, group in enumerate(groups):
        gx = x0 + gi * gw + gw * 0.1
        body.append(
            f'<text x="{gx + gw * 0.4}" y="{y0 + 14}" text-anchor="middle">'
            f"{html.escape(group)}</text>"
        )
        for si, (name, vals) in enumerate(series.items()):
            v = vals[gi]
            bh = 190 * v / ymax
            x = gx + si * bw
            body.append(
                f'<rect x="{x:.1f}" y="{y0 - bh:.1f}" width="{bw - 2:.1f}" height="{bh:.1f}" '
                f'fill="{COLORS.get(name, "#666")}"><title>{html.escape(name)}: {v}</title></rect>'
                f'<text x="{x + bw / 2:.1f}" y="{y0 - bh - 3:.1f}" text-anchor="middle">{v}</text>'
            )
    for si, name in enumerate(series):
        body.append(
            f'<rect x="{x0 + 10 + si * 120}" y="8" width="10" height="10" '
            f'fill="{COLORS.get(name, "#666")}"/><text x="{x0 + 24 + si * 120}" y="17">'
            f"{html.escape(name)}</text>"
        )
    return _svg(w, h, "".join(body), title)


def histogram(values: list[float], title: str, bins: int = 20) -> str:
    """Histogram of values in [0, 1]."""
    w, h, x0, y0 = 520, 260, 60, 220
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=bins, range=(0.0, 1.0))
    ticks = count_ticks(int(counts.max()) if len(values) else 0)
    ymax = ticks[-1]
    body = [_axes(x0, y0, 440, 190, "quality score", "images", ticks)]
    bw = 440 / bins
    for i, c in enumerate(counts):
        bh = 190 * c / ymax
        body.append(
            f'<rect x="{x0 + i * bw:.1f}" y="{y0 - bh:.1f}" width="{bw - 1:.1f}" '
            f'height="{bh:.1f}" fill="#6a51a3"><title>{edges[i]:.2f}-{edges[i + 1]:.2f}: '
            f"{c}</title></rect>"
        )
    for i in range(0, bins + 1, bins // 4):
        body.append(
            f'<text x="{x0 + i * bw:.1f}" y="{y0 + 14}" text-anchor="middle">{edges[i]:.2f}</text>'
        )
    return _svg(w, h, "".join(body), title)


def unit_plot(title: str, xlabel: str, ylabel: str, lines: list[Line]) -> str:
    """Lines in the unit square (ROC curves, reliability diagrams) with the diagonal."""
    w, h, x0, y0, s = 300, 290, 60, 240, 210
    body = [_axes(x0, y0, s, s, xlabel, ylabel, UNIT_TICKS)]
    body.append(
        f'<line x1="{x0}" y1="{y0}" x2="{x0 + s}" y2="{y0 - s}" stroke="#bbb" '
        'stroke-dasharray="4 3"/>'
    )
    for tick in UNIT_TICKS:
        body.append(
            f'<text x="{x0 + s * tick}" y="{y0 + 14}" text-anchor="middle">{tick:.2f}</text>'
        )
    for points, color, marker in lines:
        path = " ".join(f"{x0 + s * x:.1f},{y0 - s * y:.1f}" for x, y in points)
        body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        if marker:
            for x, y in points:
                body.append(
                    f'<circle cx="{x0 + s * x:.1f}" cy="{y0 - s * y:.1f}" r="3" fill="{color}"/>'
                )
    return _svg(w, h, "".join(body), title)


def roc_points(y: np.ndarray, p: np.ndarray) -> list[Point]:
    """ROC curve points (false positive rate, true positive rate), thresholds descending."""
    order = np.argsort(-p, kind="mergesort")
    y, p = y[order], p[order]
    pos, neg = max(1, int(y.sum())), max(1, int((~y).sum()))
    points = [(0.0, 0.0)]
    tp = fp = 0
    for i in range(len(p)):
        tp += int(y[i])
        fp += int(not y[i])
        if i + 1 == len(p) or p[i + 1] != p[i]:
            points.append((fp / neg, tp / pos))
    return points


def calibration_points(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[Point]:
    """Reliability diagram: (mean predicted probability, observed positive rate) per bin."""
    idx = np.minimum((p * bins).astype(int), bins - 1)
    return [
        (float(p[idx == b].mean()), float(y[idx == b].mean()))
        for b in range(bins)
        if np.any(idx == b)
    ]


def time_series(
    title: str, ylabel: str, dates: list[str], series: dict[str, list[float | None]]
) -> str:
    """One line per series over ``dates`` (category axis, in order); ``None`` values are gaps.
    Values are plotted from 0 to the largest value (at least 1e-9)."""
    w, h, x0, y0, pw, ph = 460, 290, 60, 240, 370, 210
    values = [v for vs in series.values() for v in vs if v is not None]
    top = max([*values, 1e-9])
    ticks = [top * i / 4 for i in range(5)]
    body = [_axes(x0, y0, pw, ph, "run date", ylabel, ticks)]
    step = pw / max(len(dates) - 1, 1)
    for i, d in enumerate(dates):
        if len(dates) <= 8 or i % max(len(dates) // 8, 1) == 0:
            body.append(
                f'<text x="{x0 + step * i:.1f}" y="{y0 + 14}" text-anchor="middle">'
                f"{html.escape(str(d)[5:])}</text>"
            )
    palette = ["#e34a33", "#2b8cbe", "#31a354", "#756bb1", "#636363", "#ff7f00"]
    for k, (name, vs) in enumerate(series.items()):
        color = palette[k % len(palette)]
        points = [(x0 + step * i, y0 - ph * v / top) for i, v in enumerate(vs) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            body.append(
                f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>'
            )
        for x, y in points:
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')
        label = html.escape(name)
        body.append(f'<text x="{x0 + pw + 5}" y="{y0 - ph + 14 * k}" fill="{color}">{label}</text>')
    return _svg(w + 60, h, "".join(body), title)
