"""The report's HTML page: sections built from `queries` and the services (`cxrlake.provenance`,
`cxrlake.metrics_service` through `review`), drawn with `charts`."""

from __future__ import annotations

import base64
import html
import json

import duckdb
import numpy as np
import pyarrow as pa

from cxrlake import provenance
from cxrlake._api import decode
from cxrlake.catalog import Catalog
from cxrlake.lakehouse.report import attribution, charts, png, queries
from cxrlake.lakehouse.report.overlays import overlay_section
from cxrlake.lakehouse.report.queries import Row
from cxrlake.lakehouse.report.review import review_section
from cxrlake.medallion import identity, schemas

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
.notice{border:1px solid #d4a72c;background:#fff8c5;padding:.5em 1em;border-radius:4px}
"""

NO_IMAGES_NOTICE = (
    "This report contains no patient images: example predictions are listed by image id. "
    "Add <code>--thumbnails</code> to embed downscaled images."
)
IMAGES_NOTICE = (
    "This report embeds downscaled patient images (<code>--thumbnails</code>). Thumbnails are "
    "160 pixels wide, without metadata, but text burned into an image stays legible: share "
    "this file only where the images themselves may go."
)


def _table(rows: list[Row], columns: list[str], left: tuple[str, ...] = ()) -> str:
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


def _development_caveat(catalog: Catalog, perf: list[Row]) -> str:
    """A warning per split whose films the shipped model was developed on (figures on them are
    training-set figures, not an evaluation; see `cxrlake.provenance`)."""
    share = provenance.catalog_share(catalog)
    notes = [
        f"<li>{html.escape(split)}: {html.escape(caveat)}</li>"
        for split in sorted({r["dataset_split"] for r in perf})
        if (caveat := provenance.evaluation_caveat(share, split))
    ]
    if not notes:
        return ""
    return (
        "<p><strong>Not an evaluation:</strong> the shipped model was developed on these films, "
        "so the figures above measure fit. Its validation and shift analysis are in "
        "MODEL_CARD.md.</p><ul>" + "".join(notes) + "</ul>"
    )


def _confusion_html(cm: Row) -> str:
    (tn, fp), (fn, tp) = cm["matrix"]
    return (
        "<table><tr><th>true \\ predicted</th><th>NORMAL</th><th>PNEUMONIA</th></tr>"
        f'<tr><th class="l">NORMAL</th><td>{tn}</td><td>{fp}</td></tr>'
        f'<tr><th class="l">PNEUMONIA</th><td>{fn}</td><td>{tp}</td></tr></table>'
    )


def build_page(
    con: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    catalog_path: str,
    examples: int,
    thumbnails: bool,
    credit: attribution.Attribution,
    silver: pa.Table,
) -> str:
    """The whole HTML document. ``con``: `cxrlake.lakehouse.sql.connect` over the lakehouse;
    ``catalog``: the same tables through the catalog port (for the services); ``catalog_path``:
    shown at the top; ``silver``: `queries.silver_images`."""
    now = identity.utc_now().strftime("%Y-%m-%d %H:%M UTC")
    images = silver.to_pylist()
    perf = queries.latest_performance(con).to_pylist()
    preds = queries.predictions(con).to_pylist()
    counts = queries.table_counts(con).to_pylist()
    summary = queries.dataset_summary(con).to_pylist()
    sections = [
        f"<h1>cxrlake report</h1><p class='muted'>{html.escape(catalog_path)} · {now}</p>",
        f"<p class='notice'>{IMAGES_NOTICE if thumbnails else NO_IMAGES_NOTICE}</p>",
        "<h2 id='overview'>Overview</h2>" + _table(counts, ["table", "rows"], ("table",)),
        _class_balance(images),
        "<h2 id='quality'>Quality-score histogram</h2>",
        charts.histogram(
            [r["quality_score"] for r in images if r["quality_score"] is not None],
            "Quality score distribution (silver)",
        ),
        _performance(catalog, perf, preds),
        _drift_section(con, preds),
        "<h2 id='examples'>Example predictions</h2>",
        _examples(con, preds, examples, thumbnails),
        overlay_section(con, preds, thumbnails),
        review_section(catalog),
        "<h2 id='quarantine'>Quarantine</h2>",
        _table(
            queries.quarantine(con).to_pylist(),
            ["image_id", "stage", "reason", "quarantined_at"],
            ("image_id", "stage", "reason", "quarantined_at"),
        ),
        "<h2 id='dataset-summary'>Dataset summary</h2>",
        _table(summary, list(summary[0].keys()), ("dataset_split", "label_name"))
        if summary
        else '<p class="muted">(empty)</p>',
        "<h2 id='attribution'>Data attribution</h2>"
        f"{credit.html}<p class='muted'>Attribution {html.escape(credit.source)}.</p>",
    ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>cxrlake report</title><style>{CSS}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>\n"
    )


def _class_balance(images: list[Row]) -> str:
    """Images per split and label (silver), as a grouped bar chart."""
    splits = sorted({r["dataset_split"] for r in images if r["dataset_split"] is not None})
    names = ["NORMAL", "PNEUMONIA"]
    if any(r["label_name"] is None for r in images):
        names.append("UNLABELLED")
    series = {
        n: [
            sum(
                1
                for r in images
                if r["dataset_split"] == s and (r["label_name"] or "UNLABELLED") == n
            )
            for s in splits
        ]
        for n in names
    }
    return "<h2 id='class-balance'>Class balance</h2>\n" + charts.bar_chart(
        splits, series, "Images per split and label (silver)"
    )


PERFORMANCE_COLUMNS = [
    "model_name",
    "model_version",
    "dataset_split",
    "total_samples",
    "accuracy",
    "precision",
    "recall",
    "f1_score",
    "auc_roc",
    "flagged_samples",
    "evaluated_at",
]
PALETTE = ["#e34a33", "#2b8cbe", "#31a354", "#756bb1", "#636363"]


def _performance(catalog: Catalog, perf: list[Row], preds: list[Row]) -> str:
    """The latest metrics per split with its caveat, per split the ROC curve and confusion
    matrix, then the reliability diagram of every split."""
    out = [
        "<h2 id='performance'>Model performance</h2>",
        _table(
            perf,
            PERFORMANCE_COLUMNS,
            ("model_name", "model_version", "dataset_split", "evaluated_at"),
        ),
        _development_caveat(catalog, perf),
    ]
    calib_lines: list[charts.Line] = []
    for i, row in enumerate(perf):
        y, p = _labelled(preds, row)
        title = f"{row['dataset_split']} ({row['model_name']} {row['model_version']})"
        auc = "n/a" if row["auc_roc"] is None else f"{row['auc_roc']:.3f}"
        threshold = row["threshold"] if row["threshold"] is not None else "n/a"
        out.append(f"<h3>Split {html.escape(title)}</h3><div class='grid'>")
        out.append(
            charts.unit_plot(
                f"ROC {title}, AUC {auc}",
                "false positive rate",
                "true positive rate",
                [(charts.roc_points(y, p), "#e34a33", "")],
            )
        )
        out.append(
            f"<div><p>Confusion matrix (threshold {threshold})</p>"
            + _confusion_html(json.loads(row["confusion_matrix"]))
            + "</div></div>"
        )
        if len(p):
            calib_lines.append((charts.calibration_points(y, p), PALETTE[i % len(PALETTE)], "o"))
    out.append("<h2 id='calibration'>Calibration</h2>")
    if not calib_lines:
        out.append('<p class="muted">(no labelled predictions)</p>')
        return "\n".join(out)
    legend = ", ".join(
        f"<span style='color:{c}'>{html.escape(r['dataset_split'])}</span>"
        for r, (_, c, _) in zip(perf, calib_lines, strict=False)
    )
    out.append(
        charts.unit_plot(
            "Reliability diagram",
            "mean predicted P(PNEUMONIA)",
            "observed PNEUMONIA rate",
            calib_lines,
        )
        + f"<p class='muted'>10 equal-width bins; splits: {legend}</p>"
    )
    return "\n".join(out)


def _labelled(preds: list[Row], evaluation: Row) -> tuple[np.ndarray, np.ndarray]:
    """Truth (PNEUMONIA) and probability of the labelled predictions one evaluation covers."""
    part = [
        r
        for r in preds
        if r["dataset_split"] == evaluation["dataset_split"]
        and r["model_name"] == evaluation["model_name"]
        and r["model_version"] == evaluation["model_version"]
        and r["true_label"] is not None
    ]
    y = np.array([r["true_label"] == 1 for r in part], dtype=bool)
    p = np.array([r["prediction_probability"] for r in part], dtype=float)
    return y, p


def _pick(preds: list[Row], n: int) -> list[Row]:
    """Up to ``n`` predictions: the most confident per (true label, correct) in turn."""
    picked: list[Row] = []
    keyed = sorted(preds, key=lambda r: (-r["confidence_score"], r["image_id"]))
    buckets: dict[tuple[object, object], list[Row]] = {}
    for r in keyed:
        buckets.setdefault((r["true_label"], r["is_correct"]), []).append(r)
    while len(picked) < n and any(buckets.values()):
        for key in sorted(buckets, key=str):
            if buckets[key] and len(picked) < n:
                picked.append(buckets[key].pop(0))
    return picked


def _verdict(r: Row) -> tuple[str, str, str]:
    truth = "unlabelled" if r["true_label"] is None else schemas.LABEL_NAMES[r["true_label"]]
    predicted = schemas.LABEL_NAMES[r["predicted_label"]]
    verdict = (
        ""
        if r["is_correct"] is None
        else "<span class='ok'>correct</span>"
        if r["is_correct"]
        else "<span class='bad'>wrong</span>"
    )
    return truth, predicted, verdict


def _examples(con: duckdb.DuckDBPyConnection, preds: list[Row], n: int, thumbnails: bool) -> str:
    if not preds or n <= 0:
        return '<p class="muted">(none)</p>'
    picked = _pick(preds, n)
    if not thumbnails:
        rows = []
        for r in picked:
            truth, predicted, verdict = _verdict(r)
            rows.append(
                f"<tr><td class='l'>{html.escape(r['image_id'])}</td>"
                f"<td class='l'>{html.escape(r['dataset_split'] or '')}</td><td class='l'>"
                f"{truth}</td><td class='l'>{predicted} {verdict}</td>"
                f"<td>{r['prediction_probability']:.3f}</td></tr>"
            )
        return (
            "<table><tr><th class='l'>image_id</th><th class='l'>split</th><th class='l'>true"
            "</th><th class='l'>predicted</th><th>P(PNEUMONIA)</th></tr>"
            + "".join(rows)
            + "</table>"
        )
    wanted = [(r["image_id"], r["content_sha256"]) for r in picked]
    content = queries.image_bytes(con, wanted)
    keys = [k for k in wanted if k in content]
    decoded = decode([content[k] for k in keys]).to_pylist()
    cards = []
    for key, dec in zip(keys, decoded, strict=True):
        r = next(p for p in picked if (p["image_id"], p["content_sha256"]) == key)
        if dec["error"] or not dec["pixels"]:
            continue
        thumb = png.thumbnail(dec["pixels"], dec["width"], dec["height"])
        b64 = base64.b64encode(png.png_gray(thumb)).decode("ascii")
        truth, predicted, verdict = _verdict(r)
        cards.append(
            f"<div class='card'><img alt='{html.escape(r['image_id'])}' "
            f"src='data:image/png;base64,{b64}'>"
            f"<div>split {html.escape(r['dataset_split'] or '')}</div>"
            f"<div>true: {truth} · predicted: {predicted} {verdict}</div>"
            f"<div>P(PNEUMONIA) = {r['prediction_probability']:.3f}</div></div>"
        )
    return "<div class='grid'>" + "".join(cards) + "</div>"


def _drift_section(con: duckdb.DuckDBPyConnection, preds: list[Row]) -> str:
    """Out-of-distribution films (still scored) and `gold.drift_metrics` over time."""
    out = ["<h2 id='drift'>Out of distribution and drift</h2>"]
    flagged = [p for p in preds if p.get("out_of_distribution")]
    scored = [p for p in preds if p.get("ood_score") is not None]
    out.append(
        f"<p>{len(flagged)} of {len(preds)} current predictions are flagged out of distribution "
        f"({len(scored)} carry an OOD score): the film is unlike the model's training films, so "
        "its probability means little. Flagged films are scored, stored and counted in the "
        "metrics (<code>flagged_samples</code> above) and come first in the review worklist.</p>"
    )
    if flagged:
        rows = sorted(flagged, key=lambda p: -(p.get("ood_score") or 0.0))[:20]
        out.append(
            _table(
                rows,
                ["image_id", "dataset_split", "ood_score", "ood_reason", "prediction_probability"],
                ("image_id", "dataset_split", "ood_reason"),
            )
        )
    drift = queries.drift_metrics(con).to_pylist()
    if not drift:
        out.append('<p class="muted">(no gold.drift_metrics rows)</p>')
        return "\n".join(out)
    latest = max((r["model_name"], r["model_version"]) for r in drift)
    rows = [r for r in drift if (r["model_name"], r["model_version"]) == latest]
    dates = sorted({str(r["run_date"]) for r in rows})
    sites = sorted({r["site_id"] for r in rows})
    by_key = {(r["site_id"], str(r["run_date"])): r for r in rows}

    def series(column: str) -> dict[str, list[float | None]]:
        return {s: [(by_key.get((s, d)) or {}).get(column) for d in dates] for s in sites}

    out.append(
        f"<p class='muted'>gold.drift_metrics of {html.escape(' '.join(latest))} per site (the "
        "source folder) and run date. PSI: population stability index of the probability against "
        "the training films (under 0.1 stable, 0.1-0.25 moderate shift, above 0.25 large "
        "shift); quality shift in training standard deviations.</p><div class='grid'>"
    )
    out.append(
        charts.time_series(
            "Share flagged out of distribution", "share", dates, series("flagged_share")
        )
    )
    out.append(
        charts.time_series("PSI of the probability", "PSI", dates, series("probability_psi"))
    )
    out.append(
        charts.time_series("Mean probability", "P(PNEUMONIA)", dates, series("mean_probability"))
    )
    out.append(charts.time_series("Mean OOD score", "score", dates, series("mean_ood_score")))
    out.append("</div>")
    out.append(
        _table(
            rows,
            [
                "site_id",
                "run_date",
                "film_count",
                "positive_rate",
                "mean_probability",
                "probability_psi",
                "flagged_share",
                "mean_ood_score",
                "quality_shift",
            ],
            ("site_id", "run_date"),
        )
    )
    return "\n".join(out)
