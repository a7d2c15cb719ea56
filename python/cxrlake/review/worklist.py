"""The worklist, computed from plain rows (any engine); the agreement figures are
`cxrlake.metrics_service.review_agreement`.

``predictions``: one dict per current gold prediction with at least prediction_id, image_id,
predicted_label, prediction_probability, true_label (folder label), model_name, model_version,
dataset_split, quality_score and threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TypedDict

from cxrlake.review import tables
from cxrlake.review.ports import Row
from cxrlake.review.tables import latest_verdicts, need_score

LABEL_FILTERS = ("NORMAL", "PNEUMONIA", "UNLABELLED")
__all__ = ["LABEL_FILTERS", "Worklist", "build_worklist"]


class Progress(TypedDict):
    """Items with any verdict, with this reviewer's, and all items (after the filters but the
    reviewed one)."""

    reviewed: int
    reviewed_by_me: int
    total: int


class Worklist(TypedDict):
    """What `build_worklist` returns (the review app's ``/api/worklist`` body)."""

    items: list[Row]
    progress: Progress
    options: dict[str, list[str]]


_REVIEWED_FILTERS: dict[str | None, Callable[[Row], bool]] = {
    None: lambda i: True,
    "": lambda i: True,
    "yes": lambda i: i["verdicts"] > 0,
    "no": lambda i: i["verdicts"] == 0,
    "mine": lambda i: i["my_verdict"] is not None,
    "not-mine": lambda i: i["my_verdict"] is None,
}


def build_worklist(
    predictions: Iterable[Row],
    feedback: Iterable[Row],
    current: Mapping[str, Row],
    reviewer: str,
    *,
    split: str | None = None,
    label: str | None = None,
    model_version: str | None = None,
    reviewed: str | None = None,
) -> Worklist:
    """Items ordered by `tables.need_score` (then image_id), filtered, with progress. A film
    flagged ``out_of_distribution`` goes first (need + 5, its ``ood_reason`` first among the
    reasons); an image whose current label a radiologist gave on earlier bytes
    (`tables.judged_other_bytes`) is marked ``current_label_on_earlier_bytes`` and comes next
    (need + 2).

    ``label``: folder label NORMAL / PNEUMONIA / UNLABELLED. ``reviewed``: ``yes`` / ``no``
    (any reviewer's verdict), ``mine`` / ``not-mine`` (this reviewer's). Progress counts the
    filtered items (before the reviewed filter) and all items.
    """
    preds = [dict(p) for p in predictions]
    latest = latest_verdicts(list(feedback))
    by_prediction: dict[str, list[Row]] = {}
    for (pid, _), row in latest.items():
        by_prediction.setdefault(pid, []).append(row)
    options = {
        "split": sorted({p["dataset_split"] for p in preds if p.get("dataset_split")}),
        "label": list(LABEL_FILTERS),
        "model_version": sorted({p["model_version"] for p in preds if p.get("model_version")}),
    }
    items = []
    for p in preds:
        folder = tables.label_name_of(p.get("true_label")) or "UNLABELLED"
        if split and p.get("dataset_split") != split:
            continue
        if label and folder != label:
            continue
        if model_version and p.get("model_version") != model_version:
            continue
        verdicts = by_prediction.get(p["prediction_id"], [])
        items.append(_item(p, folder, verdicts, current.get(p["image_id"]), reviewer))
    total = len(items)
    done = sum(1 for i in items if i["verdicts"])
    mine_done = sum(1 for i in items if i["my_verdict"])
    keep = _REVIEWED_FILTERS.get(reviewed)
    if keep is None:
        raise tables.ReviewError("reviewed must be one of yes, no, mine, not-mine")
    items = [i for i in items if keep(i)]
    items.sort(key=lambda i: (-i["need"], i["image_id"], i["model_version"] or ""))
    return {
        "items": items,
        "progress": {"reviewed": done, "reviewed_by_me": mine_done, "total": total},
        "options": options,
    }


def _item(p: Row, folder: str, verdicts: list[Row], cur: Row | None, reviewer: str) -> Row:
    """The worklist item of prediction ``p``: its need score and reasons, its ``verdicts`` (the
    latest per reviewer) and the image's current label ``cur``."""
    mine = next((v for v in verdicts if v["radiologist_id"] == reviewer), None)
    score, reasons = need_score(p)
    stale = tables.judged_other_bytes(cur, p.get("content_sha256"))
    if stale:
        # the file changed after a radiologist labelled it: back to the top of the list
        score += 2.0
        reasons = [*reasons, "label given on earlier bytes"]
    flagged = bool(p.get("out_of_distribution"))
    if flagged:
        # unlike the training films: the probability means little, a radiologist looks first
        score += 5.0  # above any film not flagged (at most 2.25 + 2)
        reasons = [f"out of distribution: {p.get('ood_reason') or 'flagged'}", *reasons]
    return {
        "prediction_id": p["prediction_id"],
        "image_id": p["image_id"],
        "dataset_split": p.get("dataset_split"),
        "folder_label": folder,
        "current_label": cur["label_name"] if cur else None,
        "current_label_source": cur["source"] if cur else None,
        "current_label_on_earlier_bytes": stale,
        "predicted_label": tables.label_name_of(p.get("predicted_label")),
        "probability": p.get("prediction_probability"),
        "threshold": p.get("threshold"),
        "model_name": p.get("model_name"),
        "model_version": p.get("model_version"),
        "quality_score": p.get("quality_score"),
        "has_heatmap": p.get("heatmap") is not None,
        "out_of_distribution": flagged,
        "ood_score": p.get("ood_score"),
        "ood_reason": p.get("ood_reason"),
        "need": round(score, 4),
        "reasons": reasons,
        "verdicts": len(verdicts),
        "my_verdict": mine["feedback_type"] if mine else None,
    }
