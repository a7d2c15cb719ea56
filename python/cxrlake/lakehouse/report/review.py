"""The report's "Radiologist review" section: the agreement of the model with the radiologists
over the current verdicts, from the metrics service (`cxrlake.metrics_service.review_agreement`,
the rule the review app and the Spark job run), read through the catalog port."""

from __future__ import annotations

import html
import json

from cxrlake.catalog import Catalog
from cxrlake.lakehouse.report.queries import Row
from cxrlake.medallion.schemas import FEEDBACK
from cxrlake.metrics_service import review_agreement

AGREEMENT_COLUMNS = [
    "model_name",
    "model_version",
    "reviewed_predictions",
    "verdicts",
    "agreement_rate",
    "cohen_kappa",
    "accuracy_current_labels",
    "labels_corrected",
]
REVIEWER_COLUMNS = [
    "model_version",
    "reviewer",
    "agree",
    "disagree",
    "uncertain",
    "differs_from_current_label",
]


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _table(rows: list[Row], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def review_section(catalog: Catalog) -> str:
    """HTML (heading included): agreement of the model with the radiologists over the current
    verdicts (Cohen's kappa, agreement rate, accuracy against the current labels, per-reviewer
    counts); a note on how to start reviewing when there is no verdict."""
    out = ["<h2 id='review'>Radiologist review</h2>"]
    if not catalog.exists(FEEDBACK) or not catalog.read(FEEDBACK, ["feedback_id"]).num_rows:
        out.append(
            "<p class='muted'>No verdicts yet: start the review app with "
            "<code>cxrlake review --lakehouse ...</code>.</p>"
        )
        return "\n".join(out)
    rows = review_agreement(catalog)
    out.append(_table(rows, AGREEMENT_COLUMNS))
    reviewers = [
        {"model_version": row["model_version"], "reviewer": reviewer, **counts}
        for row in rows
        for reviewer, counts in sorted(json.loads(str(row["per_reviewer"])).items())
    ]
    out.append(_table(reviewers, REVIEWER_COLUMNS))
    return "\n".join(out)
