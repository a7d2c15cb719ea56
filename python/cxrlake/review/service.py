"""The engine-neutral part of a review store, written once over `ReviewReader`: checking a
verdict against its prediction, the label-history change a store must commit, and the agreement
figures. `LocalStore` and `WarehouseStore` only read and write; these decide."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cxrlake.review import tables, worklist
from cxrlake.review.ports import ReviewReader, Row


def checked_verdict(
    store: ReviewReader, payload: Mapping[str, Any], reviewer: str
) -> tuple[str, dict[str, Any]]:
    """(reviewer, fields) of a posted verdict, validated against the prediction it names.
    Raises `ReviewError` (400, 404) when either is refused."""
    reviewer = tables.validate_reviewer(reviewer)
    pid = payload.get("prediction_id") if isinstance(payload, Mapping) else None
    prediction = store.prediction(pid) if isinstance(pid, str) else None
    return reviewer, tables.validate_verdict(payload, prediction)


def history_change(store: ReviewReader) -> tables.HistoryChange:
    """The label-history rows to close and insert (folder labels, verdicts not applied yet)."""
    return tables.label_history_changes(
        store.label_history(),
        store.folder_labels(),
        store.feedback(),
        tables.utc_now(),
        judged=tables.judged_contents(store.predictions()),
    )


def compute_agreement(store: ReviewReader) -> list[Row]:
    """Agreement of the model with the radiologists, one row per model version."""
    return worklist.agreement_metrics(
        store.predictions(),
        store.feedback(),
        tables.current_labels(store.label_history()),
        tables.utc_now(),
    )


__all__ = ["checked_verdict", "compute_agreement", "history_change"]
