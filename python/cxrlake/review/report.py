"""The "Radiologist review" section of the HTML report (`cxrlake report`)."""

from __future__ import annotations

import html
import json
import os
from typing import Any


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def review_section(lakehouse: str | os.PathLike, env: str = "dev") -> str:
    """HTML: agreement of the model with the radiologists over the current verdicts (Cohen's
    kappa, agreement rate, accuracy against the current labels, per-reviewer counts)."""
    from cxrlake.lakehouse.storage import Lakehouse
    from cxrlake.review.service import compute_agreement
    from cxrlake.review.store import LocalStore
    from cxrlake.review.tables import FEEDBACK

    out = ["<h2 id='review'>Radiologist review</h2>"]
    lh = Lakehouse(lakehouse, env)
    if not lh.exists(FEEDBACK) or lh.count(FEEDBACK) == 0:
        out.append(
            "<p class='muted'>No verdicts yet: start the review app with "
            "<code>cxrlake review --lakehouse ...</code>.</p>"
        )
        return "\n".join(out)
    rows = compute_agreement(LocalStore(lakehouse, env))
    columns = [
        "model_name",
        "model_version",
        "reviewed_predictions",
        "verdicts",
        "agreement_rate",
        "cohen_kappa",
        "accuracy_current_labels",
        "labels_corrected",
    ]
    out.append(_table(rows, columns))
    reviewers = []
    for row in rows:
        for reviewer, counts in sorted(json.loads(row["per_reviewer"]).items()):
            reviewers.append(
                {"model_version": row["model_version"], "reviewer": reviewer, **counts}
            )
    out.append(
        _table(
            reviewers,
            [
                "model_version",
                "reviewer",
                "agree",
                "disagree",
                "uncertain",
                "differs_from_current_label",
            ],
        )
    )
    return "\n".join(out)
