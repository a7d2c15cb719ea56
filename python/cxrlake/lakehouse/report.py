"""Self-contained HTML report over the lakehouse (``cxrlake report``).

One file, no external assets: charts are inline SVG, example images are small base64 PNG
thumbnails decoded by the Rust core from the bytes kept in bronze. Sections: overview, class
balance, quality-score histogram, per-split ROC curve + confusion matrix + metrics, calibration,
example images with predictions, quarantine list, dataset summary, data attribution (CC BY 4.0).
"""

from __future__ import annotations

import base64
import html
import json
import os
import struct
import zlib
from typing import Any

import numpy as np

from cxrlake.lakehouse import schemas, transforms
from cxrlake.lakehouse.sql import connect

ATTRIBUTION = (
    "Chest X-ray images: Kermany D., Zhang K., Goldbaum M. (2018), “Labeled Optical Coherence "
    "Tomography (OCT) and Chest X-Ray Images for Classification”, Mendeley Data, v2, "
    '<a href="https://doi.org/10.17632/rscbjbr9sj.2">doi:10.17632/rscbjbr9sj.2</a>, licensed '
    '<a href="https://creativecommons.org/licenses/by/4.0/">CC BY 4.0</a> (the same images as the '
    "Kaggle “Chest X-Ray Images (Pneumonia)” data set). Thumbnails are downscaled; no other "
    "changes were made."
)

COLORS = {"NORMAL": "#2b8cbe", "PNEUMONIA": "#e34a33", "UNLABELLED": "#999999"}

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:right;font-size:13px}th{background:#f4f4f4}td.l,th.l{text-align:left}
.muted{color:#777;font-size:13px}.grid{display:flex;flex-wrap:wrap;gap:16px}
.card{border:1px solid #ddd;border-radius:4px;padding:8px;font-size:12px;width:180px}
.card img{width:160px;height:auto;display:block;margin:auto;image-rendering:auto}
.ok{color:#1a7f37}.bad{color:#cf222e}svg text{font-size:11px;font-family:inherit}
"""


# ------------------------------------------------------------------ tiny PNG and SVG helpers
def png_gray(pixels: np.ndarray) -> bytes:
    """Encode a 2-D uint8 array as a grayscale PNG (no external imaging library)."""
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


def _svg(width: int, height: int, body: str, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">'
        f"<title>{html.escape(title)}</title>{body}</svg>"
    )


def _axes(x0: int, y0: int, w: int, h: int, xlabel: str, ylabel: str, ymax: float) -> str:
    parts = [
        f'<line x1="{x0}" y1="{y0}" x2="{x0 + w}" y2="{y0}" stroke="#444"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0 - h}" stroke="#444"/>',
        f'<text x="{x0 + w / 2}" y="{y0 + 30}" text-anchor="middle">{html.escape(xlabel)}</text>',
        f'<text x="{x0 - 38}" y="{y0 - h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 {x0 - 38} {y0 - h / 2})">{html.escape(ylabel)}</text>',
    ]
    for i in range(5):
        v = ymax * i / 4
        y = y0 - h * i / 4
        label = f"{v:.2f}" if ymax <= 1.0 else f"{v:.0f}"
        parts.append(f'<text x="{x0 - 4}" y="{y + 4}" text-anchor="end">{label}</text>')
        parts.append(f'<line x1="{x0}" y1="{y}" x2="{x0 + w}" y2="{y}" stroke="#eee"/>')
    return "".join(parts)


def bar_chart(groups: list[str], series: dict[str, list[int]], title: str) -> str:
    """Grouped bar chart: one group per split, one bar per label."""
    w, h, x0, y0 = 520, 260, 60, 220
    ymax = max([1] + [v for vals in series.values() for v in vals])
    ymax = float(ymax) * 1.1
    body = [_axes(x0, y0, 440, 190, "dataset split", "images", ymax)]
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
    ymax = float(max(1, counts.max())) * 1.1
    body = [_axes(x0, y0, 440, 190, "quality score", "images", ymax)]
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


def roc_points(y: np.ndarray, p: np.ndarray) -> list[tuple[float, float]]:
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


def _unit_plot(title: str, xlabel: str, ylabel: str, lines: list[tuple[list, str, str]]) -> str:
    w, h, x0, y0, s = 300, 290, 60, 240, 210
    body = [_axes(x0, y0, s, s, xlabel, ylabel, 1.0)]
    body.append(
        f'<line x1="{x0}" y1="{y0}" x2="{x0 + s}" y2="{y0 - s}" stroke="#bbb" '
        'stroke-dasharray="4 3"/>'
    )
    for i in range(5):
        body.append(
            f'<text x="{x0 + s * i / 4}" y="{y0 + 14}" text-anchor="middle">{i / 4:.2f}</text>'
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


def calibration_points(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[tuple[float, float]]:
    """Reliability diagram: (mean predicted probability, observed positive rate) per bin."""
    idx = np.minimum((p * bins).astype(int), bins - 1)
    return [
        (float(p[idx == b].mean()), float(y[idx == b].mean()))
        for b in range(bins)
        if np.any(idx == b)
    ]


# ------------------------------------------------------------------ report
def _table(rows: list[dict[str, Any]], columns: list[str], left: tuple[str, ...] = ()) -> str:
    if not rows:
        return '<p class="muted">(none)</p>'
    head = "".join(f'<th class="{"l" if c in left else ""}">{html.escape(c)}</th>' for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            text = (
                "NULL" if v is None else f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))
            )
            cells.append(f'<td class="{"l" if c in left else ""}">{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _confusion_html(cm: dict[str, Any]) -> str:
    (tn, fp), (fn, tp) = cm["matrix"]
    return (
        "<table><tr><th>true \\ predicted</th><th>NORMAL</th><th>PNEUMONIA</th></tr>"
        f'<tr><th class="l">NORMAL</th><td>{tn}</td><td>{fp}</td></tr>'
        f'<tr><th class="l">PNEUMONIA</th><td>{fn}</td><td>{tp}</td></tr></table>'
    )


def build_report(lakehouse: str | os.PathLike, env: str = "dev", examples: int = 8) -> str:
    """Build the HTML report text for one lakehouse catalog."""
    import cxrlake

    con = connect(lakehouse, env, udfs=False)
    try:
        return _build(con, lakehouse, env, examples, cxrlake)
    finally:
        con.close()


def _rows(con: Any, sql: str) -> list[dict[str, Any]]:
    return con.sql(sql).to_arrow_table().to_pylist()


def _has(con: Any, qualified: str) -> bool:
    schema, name = qualified.split(".")
    return bool(
        con.execute(
            "SELECT count(*) FROM duckdb_views() WHERE schema_name = ? AND view_name = ?",
            [schema, name],
        ).fetchall()[0][0]
    )


def _build(con: Any, lakehouse: Any, env: str, examples: int, cxrlake: Any) -> str:
    out: list[str] = []
    now = transforms.utc_now().strftime("%Y-%m-%d %H:%M UTC")
    catalog = schemas.catalog_path(os.path.abspath(os.fspath(lakehouse)), env)
    out.append(f"<h1>cxrlake report</h1><p class='muted'>{html.escape(catalog)} · {now}</p>")

    # overview
    counts = []
    for spec in schemas.TABLES:
        n = (
            con.execute(f"SELECT count(*) FROM {spec.qualified_name}").fetchall()[0][0]
            if _has(con, spec.qualified_name)
            else 0
        )
        counts.append({"table": spec.qualified_name, "rows": n})
    out.append("<h2 id='overview'>Overview</h2>" + _table(counts, ["table", "rows"], ("table",)))

    silver = (
        _rows(con, "SELECT dataset_split, label_name, quality_score FROM silver.xray_metadata")
        if _has(con, "silver.xray_metadata")
        else []
    )

    # class balance
    out.append("<h2 id='class-balance'>Class balance</h2>")
    splits = sorted({r["dataset_split"] for r in silver})
    names = ["NORMAL", "PNEUMONIA"]
    if any(r["label_name"] is None for r in silver):
        names.append("UNLABELLED")
    series = {
        n: [
            sum(
                1
                for r in silver
                if r["dataset_split"] == s and (r["label_name"] or "UNLABELLED") == n
            )
            for s in splits
        ]
        for n in names
    }
    out.append(bar_chart(splits, series, "Images per split and label (silver)"))

    # quality
    out.append("<h2 id='quality'>Quality-score histogram</h2>")
    out.append(
        histogram([r["quality_score"] for r in silver], "Quality score distribution (silver)")
    )

    # performance
    out.append("<h2 id='performance'>Model performance</h2>")
    perf = (
        _rows(
            con,
            "SELECT * FROM gold.model_performance QUALIFY row_number() OVER (PARTITION BY "
            "model_name, model_version, dataset_split ORDER BY evaluated_at DESC, evaluation_id) "
            "= 1 ORDER BY model_name, model_version, dataset_split",
        )
        if _has(con, "gold.model_performance")
        else []
    )
    out.append(
        _table(
            perf,
            [
                "model_name",
                "model_version",
                "dataset_split",
                "total_samples",
                "accuracy",
                "precision",
                "recall",
                "f1_score",
                "auc_roc",
                "evaluated_at",
            ],
            ("model_name", "model_version", "dataset_split", "evaluated_at"),
        )
    )
    preds = (
        _rows(
            con,
            "SELECT p.*, m.file_path FROM gold.pneumonia_predictions p JOIN silver.xray_metadata m"
            " ON p.image_id = m.image_id AND p.content_sha256 = m.content_sha256",
        )
        if _has(con, "gold.pneumonia_predictions")
        else []
    )
    calib_lines = []
    palette = ["#e34a33", "#2b8cbe", "#31a354", "#756bb1", "#636363"]
    for i, row in enumerate(perf):
        part = [
            r
            for r in preds
            if r["dataset_split"] == row["dataset_split"]
            and r["model_name"] == row["model_name"]
            and r["model_version"] == row["model_version"]
            and r["true_label"] is not None
        ]
        y = np.array([r["true_label"] == 1 for r in part], dtype=bool)
        p = np.array([r["prediction_probability"] for r in part], dtype=float)
        title = f"{row['dataset_split']} ({row['model_name']} {row['model_version']})"
        auc = "n/a" if row["auc_roc"] is None else f"{row['auc_roc']:.3f}"
        out.append(f"<h3>Split {html.escape(title)}</h3><div class='grid'>")
        out.append(
            _unit_plot(
                f"ROC {title}, AUC {auc}",
                "false positive rate",
                "true positive rate",
                [(roc_points(y, p), "#e34a33", "")],
            )
        )
        out.append(
            "<div><p>Confusion matrix (threshold "
            f"{row['threshold'] if row['threshold'] is not None else 'n/a'})</p>"
            + _confusion_html(json.loads(row["confusion_matrix"]))
            + "</div></div>"
        )
        if len(p):
            calib_lines.append((calibration_points(y, p), palette[i % len(palette)], "o"))
    out.append("<h2 id='calibration'>Calibration</h2>")
    if calib_lines:
        legend = ", ".join(
            f"<span style='color:{c}'>{html.escape(r['dataset_split'])}</span>"
            for r, (_, c, _) in zip(perf, calib_lines, strict=False)
        )
        out.append(
            _unit_plot(
                "Reliability diagram",
                "mean predicted P(PNEUMONIA)",
                "observed PNEUMONIA rate",
                calib_lines,
            )
            + f"<p class='muted'>10 equal-width bins; splits: {legend}</p>"
        )
    else:
        out.append('<p class="muted">(no labelled predictions)</p>')

    # examples
    out.append("<h2 id='examples'>Example images</h2>")
    out.append(_examples(con, preds, examples, cxrlake))

    # quarantine
    out.append("<h2 id='quarantine'>Quarantine</h2>")
    quarantine = (
        _rows(
            con,
            "SELECT file_path, stage, reason, quarantined_at FROM silver.quarantine "
            "ORDER BY file_path",
        )
        if _has(con, "silver.quarantine")
        else []
    )
    out.append(
        _table(
            quarantine,
            ["file_path", "stage", "reason", "quarantined_at"],
            ("file_path", "stage", "reason", "quarantined_at"),
        )
    )

    # summary view
    out.append("<h2 id='dataset-summary'>Dataset summary</h2>")
    summary = (
        _rows(con, f"SELECT * FROM {schemas.DATASET_SUMMARY_VIEW}")
        if _has(con, schemas.DATASET_SUMMARY_VIEW)
        else []
    )
    if summary:
        out.append(_table(summary, list(summary[0].keys()), ("dataset_split", "label_name")))
    else:
        out.append('<p class="muted">(empty)</p>')

    out.append(f"<h2 id='attribution'>Data attribution</h2><p>{ATTRIBUTION}</p>")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>cxrlake report</title><style>{CSS}</style></head><body>"
        + "\n".join(out)
        + "</body></html>\n"
    )


def _examples(con: Any, preds: list[dict[str, Any]], n: int, cxrlake: Any) -> str:
    """Up to ``n`` thumbnails: the most confident correct and incorrect prediction per label."""
    if not preds or n <= 0:
        return '<p class="muted">(no predictions)</p>'
    picked: list[dict[str, Any]] = []
    keyed = sorted(preds, key=lambda r: (-r["confidence_score"], r["image_id"]))
    buckets: dict[tuple, list] = {}
    for r in keyed:
        buckets.setdefault((r["true_label"], r["is_correct"]), []).append(r)
    while len(picked) < n and any(buckets.values()):
        for key in sorted(buckets, key=str):
            if buckets[key] and len(picked) < n:
                picked.append(buckets[key].pop(0))
    wanted = [(r["image_id"], r["content_sha256"]) for r in picked]
    con.execute("CREATE TEMP TABLE __wanted(image_id VARCHAR, content_sha256 VARCHAR)")
    con.executemany("INSERT INTO __wanted VALUES (?, ?)", wanted)
    content = {
        (r["image_id"], r["content_sha256"]): r["content"]
        for r in _rows(
            con,
            "SELECT b.image_id, b.content_sha256, any_value(b.content) AS content "
            "FROM bronze.kaggle_xray_metadata b JOIN __wanted w USING (image_id, content_sha256) "
            "GROUP BY ALL",
        )
    }
    con.execute("DROP TABLE __wanted")
    keys = [k for k in wanted if k in content]
    decoded = cxrlake.decode([content[k] for k in keys]).to_pylist()
    cards = []
    for key, dec in zip(keys, decoded, strict=True):
        r = next(p for p in picked if (p["image_id"], p["content_sha256"]) == key)
        if dec["error"] or not dec["pixels"]:
            continue
        thumb = thumbnail(dec["pixels"], dec["width"], dec["height"])
        b64 = base64.b64encode(png_gray(thumb)).decode("ascii")
        truth = "unlabelled" if r["true_label"] is None else schemas.LABEL_NAMES[r["true_label"]]
        predicted = schemas.LABEL_NAMES[r["predicted_label"]]
        verdict = (
            ""
            if r["is_correct"] is None
            else "<span class='ok'>correct</span>"
            if r["is_correct"]
            else "<span class='bad'>wrong</span>"
        )
        cards.append(
            f"<div class='card'><img alt='{html.escape(r['image_id'])}' "
            f"src='data:image/png;base64,{b64}'><div>{html.escape(os.path.basename(r['file_path']))}"
            f"</div><div>split {html.escape(r['dataset_split'] or '')}</div>"
            f"<div>true: {truth} · predicted: {predicted} {verdict}</div>"
            f"<div>P(PNEUMONIA) = {r['prediction_probability']:.3f}</div></div>"
        )
    return "<div class='grid'>" + "".join(cards) + "</div>"


def write_report(
    lakehouse: str | os.PathLike, out: str | os.PathLike, env: str = "dev", examples: int = 8
) -> str:
    """Write the HTML report to ``out`` (atomically: temp file + rename); return its path."""
    text = build_report(lakehouse, env, examples)
    out = os.fspath(out)
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, out)
    return out
