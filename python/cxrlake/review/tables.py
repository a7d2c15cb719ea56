"""Tables of the review loop and the rules that fill them, engine-neutral.

- ``gold.prediction_feedback``: append-only, one row per verdict (Change Data Feed on). A changed
  verdict is a new row; for each (prediction_id, radiologist_id) the latest row counts.
- ``silver.label_history``: SCD type 2 of every image's label. The folder label opens the history
  (``source = 'folder'``); a decisive verdict (agree or disagree) whose label differs from the
  current one closes the current row (``valid_to``, ``is_current = false``) and opens a new one
  (``source`` = the radiologist's id). ``uncertain`` changes nothing.

The rules are plain functions over lists of dicts, so the local store (delta-rs) and the Databricks
store (SQL warehouse) execute the same code.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cxrlake.exceptions import CxrlakeError
from cxrlake.medallion import schemas
from cxrlake.medallion.metrics import latest_verdicts  # noqa: F401 - re-export
from cxrlake.medallion.schemas import TableSpec
from cxrlake.review.ports import Row

LABEL_NAMES: tuple[str, ...] = schemas.LABEL_NAMES
"""Label names; the index is the integer label (as in the lakehouse)."""

FEEDBACK_TYPES: tuple[str, ...] = ("agree", "disagree", "uncertain")
CONFIDENCE_LEVELS: tuple[str, ...] = ("low", "medium", "high")
MAX_COMMENT_CHARS = 2000
MAX_REVIEWER_CHARS = 200
FOLDER_SOURCE = "folder"

# The schemas live with the other lakehouse tables (shared by both engines and sql/).
PREDICTION_FEEDBACK = schemas.GOLD_FEEDBACK
LABEL_HISTORY = schemas.SILVER_LABEL_HISTORY
REVIEW_AGREEMENT = schemas.GOLD_REVIEW_AGREEMENT
FEEDBACK = schemas.FEEDBACK
HISTORY = schemas.LABEL_HISTORY
AGREEMENT = schemas.REVIEW_AGREEMENT
REVIEW_TABLES: tuple[TableSpec, ...] = schemas.REVIEW_TABLES
EXTRA_PROPERTIES: dict[str, dict[str, str]] = {FEEDBACK.name: {"delta.appendOnly": "true"}}
"""Table properties beyond the lakehouse's: the feedback table refuses updates and deletes."""

_HEX32 = re.compile(r"^[0-9a-f]{32}$")


class ReviewError(CxrlakeError, ValueError):
    """A verdict that is refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_feedback_id() -> str:
    return uuid.uuid4().hex


def validate_reviewer(reviewer: str | None) -> str:
    """A reviewer id: printable, 1..200 characters, no surrounding blanks."""
    text = (reviewer or "").strip()
    if not text:
        raise ReviewError("no reviewer identity", 401)
    if len(text) > MAX_REVIEWER_CHARS or not text.isprintable():
        raise ReviewError("invalid reviewer identity", 400)
    return text


def label_name_of(label: int | None) -> str | None:
    if label is None:
        return None
    return LABEL_NAMES[int(label)]


def validate_verdict(payload: Mapping[str, object], prediction: Row | None) -> Row:
    """Check a verdict posted by the app; return the normalised fields.

    ``prediction``: the gold row of ``payload['prediction_id']`` (None when unknown). Raises
    `ReviewError` naming the problem; nothing is written for a refused verdict.
    """
    if not isinstance(payload, Mapping):
        raise ReviewError("the request body must be a JSON object")
    allowed = {
        "feedback_id",
        "prediction_id",
        "feedback_type",
        "correct_label",
        "confidence_level",
        "comments",
    }
    extra = sorted(set(payload) - allowed)
    if extra:
        raise ReviewError(f"unknown field(s): {', '.join(extra)}")
    # Absent or null: a new id. Anything else must be a valid id: `0` or "" are refused, never
    # silently replaced (the client would not know the id its verdict was stored under).
    feedback_id = payload.get("feedback_id")
    if feedback_id is None:
        feedback_id = new_feedback_id()
    if not isinstance(feedback_id, str) or not _HEX32.fullmatch(feedback_id):
        raise ReviewError("feedback_id must be 32 lowercase hex digits")
    pid = payload.get("prediction_id")
    if not isinstance(pid, str) or not pid:
        raise ReviewError("prediction_id is required")
    if prediction is None:
        raise ReviewError(f"unknown prediction {pid[:64]!r}", 404)
    ftype = payload.get("feedback_type")
    if not isinstance(ftype, str) or ftype not in FEEDBACK_TYPES:
        raise ReviewError(f"feedback_type must be one of {', '.join(FEEDBACK_TYPES)}")
    predicted = label_name_of(prediction.get("predicted_label"))
    posted = payload.get("correct_label")
    label: str | None
    if ftype == "uncertain":
        if posted not in (None, ""):
            raise ReviewError("an uncertain verdict takes no correct_label")
        label = None
    elif ftype == "agree":
        if posted not in (None, "", predicted):
            raise ReviewError(f"agree means the predicted label {predicted}; got {posted!r}")
        label = predicted
    else:
        if not isinstance(posted, str) or posted not in LABEL_NAMES:
            raise ReviewError(
                f"invalid correct_label {str(posted)[:40]!r}: use {' or '.join(LABEL_NAMES)}"
            )
        if posted == predicted:
            raise ReviewError(f"disagree needs a label other than the predicted {predicted}")
        label = posted
    confidence = payload.get("confidence_level") or "medium"
    if not isinstance(confidence, str) or confidence not in CONFIDENCE_LEVELS:
        raise ReviewError(f"confidence_level must be one of {', '.join(CONFIDENCE_LEVELS)}")
    comments = payload.get("comments") or None
    if comments is not None:
        if not isinstance(comments, str):
            raise ReviewError("comments must be text")
        if len(comments) > MAX_COMMENT_CHARS:
            raise ReviewError(
                f"comment is {len(comments)} characters; the limit is {MAX_COMMENT_CHARS}", 413
            )
    return {
        "feedback_id": feedback_id,
        "prediction_id": pid,
        "image_id": prediction["image_id"],
        "feedback_type": ftype,
        "correct_label": label,
        "confidence_level": confidence,
        "comments": comments,
    }


def repeated_verdict(stored: Row, fields: Row, reviewer: str) -> Row:
    """The stored row of a ``feedback_id`` posted again: the same verdict again (a retry) returns
    it; a different body under the same id raises `ReviewError` 409 (nothing is written)."""
    same = stored.get("radiologist_id") == reviewer and all(
        stored.get(k) == fields[k]
        for k in ("prediction_id", "feedback_type", "correct_label", "confidence_level", "comments")
    )
    if not same:
        raise ReviewError("feedback_id already used for another verdict", 409)
    return dict(stored)


def feedback_row(fields: Row, reviewer: str, at: dt.datetime) -> Row:
    """The ``gold.prediction_feedback`` row of a validated verdict."""
    return {
        "feedback_id": fields["feedback_id"],
        "prediction_id": fields["prediction_id"],
        "image_id": fields["image_id"],
        "radiologist_id": reviewer,
        "feedback_type": fields["feedback_type"],
        "correct_label": fields["correct_label"],
        "confidence_level": fields["confidence_level"],
        "comments": fields["comments"],
        "feedback_timestamp": at,
    }


@dataclass
class HistoryChange:
    """What to write to ``silver.label_history``: rows to close and rows to insert."""

    close: list[Row]  # current rows, with valid_to / is_current already updated
    insert: list[Row]

    def __bool__(self) -> bool:
        return bool(self.close or self.insert)


def judged_contents(predictions: Iterable[Row]) -> dict[str, str]:
    """prediction_id -> content_sha256 of the bytes it scored (what a verdict on it judges)."""
    return {p["prediction_id"]: p["content_sha256"] for p in predictions if p.get("content_sha256")}


def label_history_changes(
    history: Iterable[Row],
    folder_labels: Mapping[str, int | None],
    feedback: Iterable[Row],
    now: dt.datetime,
    judged: Mapping[str, str] | None = None,
) -> HistoryChange:
    """SCD2 changes that bring the label history up to date with folder labels and verdicts.

    ``folder_labels``: image_id -> folder label (int; None when unlabelled). Images without any
    history row get a ``folder`` row (valid from ``now``). Decisive verdicts not yet applied
    (their ``feedback_id`` is in no history row, and they are later than the image's last applied
    verdict) are applied in time order: a label different
    from the current one closes the current row at the verdict's time and opens a new one.
    Deterministic and idempotent: applying the result and calling again gives no change.
    ``judged``: prediction_id -> the content_sha256 it scored (`judged_contents`), recorded on
    the label a verdict opens (NULL when its prediction is no longer current).
    """
    judged = judged or {}
    current: dict[str, Row] = {}
    applied: set[str] = set()
    for row in history:
        if row.get("feedback_id"):
            applied.add(row["feedback_id"])
        if row["is_current"]:
            current[row["image_id"]] = dict(row)
    inserts = _folder_rows(current, folder_labels, now)
    closes: dict[tuple[str, dt.datetime], Row] = {}
    for f in _pending_verdicts(list(feedback), applied):
        label = LABEL_NAMES.index(f["correct_label"])
        image_id = f["image_id"]
        cur = current.get(image_id)
        if cur is not None and cur["label"] == label:
            continue
        at = f["feedback_timestamp"]
        if cur is not None:
            at = max(at, cur["valid_from"] + dt.timedelta(microseconds=1))
            key = (image_id, cur["valid_from"])
            if key in inserts:
                inserts[key] = {**cur, "valid_to": at, "is_current": False}
            else:
                closes[key] = {**cur, "valid_to": at, "is_current": False}
        judged_pid = f.get("prediction_id")
        row = {
            "image_id": image_id,
            "label": label,
            "label_name": f["correct_label"],
            "source": f["radiologist_id"],
            "feedback_id": f["feedback_id"],
            "valid_from": at,
            "valid_to": None,
            "is_current": True,
            "content_sha256": None if judged_pid is None else judged.get(judged_pid),
        }
        current[image_id] = row
        inserts[(image_id, at)] = row
    return HistoryChange(close=list(closes.values()), insert=list(inserts.values()))


def _folder_rows(
    current: dict[str, Row], folder_labels: Mapping[str, int | None], now: dt.datetime
) -> dict[tuple[str, dt.datetime], Row]:
    """The ``folder`` rows of labelled images without a current row, by (image_id, valid_from);
    each is also made the image's entry in ``current``."""
    inserts: dict[tuple[str, dt.datetime], Row] = {}
    for image_id, label in sorted(folder_labels.items()):
        if image_id not in current and label is not None:
            row: Row = {
                "image_id": image_id,
                "label": int(label),
                "label_name": label_name_of(label),
                "source": FOLDER_SOURCE,
                "feedback_id": None,
                "valid_from": now,
                "valid_to": None,
                "is_current": True,
                "content_sha256": None,
            }
            current[image_id] = row
            inserts[(image_id, now)] = row
    return inserts


def _pending_verdicts(feedback: list[Row], applied: set[str]) -> list[Row]:
    """The decisive verdicts still to apply, in time order: not in the history (``applied``)
    and later than the image's latest applied verdict."""
    # per image, the latest verdict already reflected in the history: verdicts up to it are done
    # (one that confirmed the label in force left no row of its own)
    watermark: dict[str, tuple[dt.datetime, str]] = {}
    for f in feedback:
        if f["feedback_id"] in applied:
            key = (f["feedback_timestamp"], f["feedback_id"])
            watermark[f["image_id"]] = max(watermark.get(f["image_id"], key), key)
    pending = [
        f
        for f in feedback
        if f["feedback_type"] in ("agree", "disagree")
        and f["feedback_id"] not in applied
        and f.get("correct_label") in LABEL_NAMES
        and (
            f["image_id"] not in watermark
            or (f["feedback_timestamp"], f["feedback_id"]) > watermark[f["image_id"]]
        )
    ]
    return sorted(pending, key=lambda r: (r["feedback_timestamp"], r["feedback_id"]))


def current_labels(history: Iterable[Row]) -> dict[str, Row]:
    """image_id -> the current label history row."""
    return {r["image_id"]: dict(r) for r in history if r["is_current"]}


def judged_other_bytes(label: Row | None, content_sha256: str | None) -> bool:
    """Whether a current label is a radiologist's given on other bytes than ``content_sha256``
    (the image's bytes now): the file changed after the verdict, so the label no longer stands
    for what is scored. Folder labels and labels of unknown content are not."""
    if not label or label.get("source") == FOLDER_SOURCE or content_sha256 is None:
        return False
    judged = label.get("content_sha256")
    return judged is not None and judged != content_sha256


def need_score(prediction: Row) -> tuple[float, list[str]]:
    """How much a prediction needs a human, and why (worklist order, highest first).

    ``1 - |p - threshold| / max(threshold, 1 - threshold)`` (1 at the threshold, 0 at the far
    end) plus 1 when the model and the folder label disagree plus 0.25 for a predicted positive.
    """
    p = prediction.get("prediction_probability")
    t = prediction.get("threshold")
    reasons: list[str] = []
    score = 0.0
    if p is not None and t is not None:
        closeness = 1.0 - abs(p - t) / max(t, 1.0 - t)
        score += closeness
        if closeness >= 0.75:
            reasons.append("near threshold")
    true_label = prediction.get("true_label")
    if true_label is not None and prediction.get("predicted_label") != true_label:
        score += 1.0
        reasons.append("disagrees with folder label")
    if prediction.get("predicted_label") == 1:
        score += 0.25
        reasons.append("positive")
    return score, reasons
