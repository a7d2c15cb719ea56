"""The review store, written once over the catalog port (`cxrlake.catalog.Catalog`): predictions
joined to silver with the threshold that decided them, verdicts checked against their
prediction, the label history brought up to date, the agreement figures. The adapters
(`cxrlake.review.store.LocalStore` over `LocalCatalog`, `cxrlake.review.warehouse.WarehouseStore`
over a SQL warehouse, or this class over `cxrlake.spark.catalog.SparkCatalog` on a cluster) only
say where the tables are, how writers are serialised and where image bytes may come from.

A verdict is one commit to ``gold.prediction_feedback``; the label history is then brought up to
date from the feedback table in one merge commit. A crash between the two commits loses nothing:
the next write (or the next start) replays every verdict the history has not applied yet.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import pyarrow as pa

from cxrlake import metrics_service
from cxrlake.catalog import Catalog
from cxrlake.medallion import schemas
from cxrlake.model import Model
from cxrlake.review import tables
from cxrlake.review.images import servable_image
from cxrlake.review.ports import ReviewReader, Row
from cxrlake.review.tables import AGREEMENT, FEEDBACK, HISTORY, ReviewError

PREDICTION_COLUMNS = [
    "prediction_id",
    "image_id",
    "predicted_label",
    "prediction_probability",
    "true_label",
    "model_name",
    "model_version",
    "dataset_split",
    "content_sha256",
]
OPTIONAL_PREDICTION_COLUMNS = [
    "heatmap",
    "decision_threshold",
    "threshold_source",
    "ood_score",
    "out_of_distribution",
    "ood_reason",
]
"""Read when the stored table has them (a table of an earlier version may lack them)."""


def checked_verdict(
    store: ReviewReader, payload: Mapping[str, object], reviewer: str
) -> tuple[str, Row]:
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


class CatalogReviewStore:
    """The port `cxrlake.review.ports.ReviewStore` over a `Catalog`. Writes are serialised by
    `write_lock` (a ``threading.Lock``; adapters add what their engine needs)."""

    engine: str = "catalog"
    history_attempts: int = 1
    """Tries of a label-history update (an adapter whose tables other writers change too
    retries a merge that conflicted: the change is computed again each time)."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._lock = threading.Lock()
        self._model_thresholds: dict[tuple[str, str], float | None] = {}

    @property
    def catalog(self) -> Catalog:
        """The catalog the review tables live in."""
        return self._catalog

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """Held around every write of this store."""
        with self._lock:
            yield

    def ensure_tables(self) -> None:
        """Create the review tables that do not exist yet (Change Data Feed on; the feedback
        table append-only), or add the nullable columns an earlier version's table lacks."""
        for spec in tables.REVIEW_TABLES:
            self._ensure(spec)

    def _ensure(self, spec: schemas.TableSpec) -> None:
        self.catalog.ensure(spec, tables.EXTRA_PROPERTIES.get(spec.name))

    # ------------------------------------------------------------------ reading
    def predictions(self) -> list[Row]:
        """Current predictions (their content hash is silver's) with quality score, threshold
        (the row's ``decision_threshold``, else the model's latest evaluated one, else the
        shipped model's) and, when the table has them, the heatmap and the OOD flag."""
        names = set(self.catalog.columns(schemas.PREDICTIONS))
        columns = PREDICTION_COLUMNS + [c for c in OPTIONAL_PREDICTION_COLUMNS if c in names]
        preds = self.catalog.read(schemas.PREDICTIONS, columns).to_pylist()
        silver = {
            r["image_id"]: r
            for r in self.catalog.read(
                schemas.SILVER, ["image_id", "content_sha256", "quality_score"]
            ).to_pylist()
        }
        thresholds = self._evaluated_thresholds()
        out = []
        for p in preds:
            s = silver.get(p["image_id"])
            if s is None or s["content_sha256"] != p["content_sha256"]:
                continue
            p["quality_score"] = s["quality_score"]
            # the threshold that decided this row (a site's, when calibrated), else the model's
            p["threshold"] = p.get("decision_threshold")
            if p["threshold"] is None:
                p["threshold"] = thresholds.get((p["model_name"], p["model_version"]))
            if p["threshold"] is None:
                p["threshold"] = self._model_threshold(p["model_name"], p["model_version"])
            out.append(p)
        return out

    def _evaluated_thresholds(self) -> dict[tuple[str, str], float]:
        """Decision threshold per (model_name, model_version): the latest
        ``gold.model_performance`` row's."""
        perf = self.catalog.read(
            schemas.PERFORMANCE, ["model_name", "model_version", "threshold", "evaluated_at"]
        ).to_pylist()
        out: dict[tuple[str, str], float] = {}
        for row in sorted(perf, key=lambda r: r["evaluated_at"]):
            if row["threshold"] is not None:
                out[(row["model_name"], row["model_version"])] = row["threshold"]
        return out

    def _model_threshold(self, name: str, version: str) -> float | None:
        key = (name, version)
        if key not in self._model_thresholds:
            value = None
            try:
                model = Model()
                if (model.name, model.version) == key:
                    value = model.threshold
            except Exception:  # noqa: BLE001 - no model: the threshold is shown as unknown
                value = None
            self._model_thresholds[key] = value
        return self._model_thresholds[key]

    def prediction(self, prediction_id: str) -> Row | None:
        return next((p for p in self.predictions() if p["prediction_id"] == prediction_id), None)

    def folder_labels(self) -> dict[str, int | None]:
        rows = self.catalog.read(schemas.SILVER, ["image_id", "label"]).to_pylist()
        return {r["image_id"]: r["label"] for r in rows}

    def feedback(self, prediction_id: str | None = None) -> list[Row]:
        flt = None if prediction_id is None else {"prediction_id": prediction_id}
        return self.catalog.read(FEEDBACK, filter=flt).to_pylist()

    def label_history(self, image_id: str | None = None) -> list[Row]:
        flt = None if image_id is None else {"image_id": image_id}
        rows = self.catalog.read(HISTORY, filter=flt).to_pylist()
        return sorted(rows, key=lambda r: (r["image_id"], r["valid_from"]))

    def agreement(self) -> list[Row]:
        return self.catalog.read(AGREEMENT).to_pylist()

    def current_agreement(self) -> list[Row]:
        """The agreement figures of the current verdicts, not stored (the one rule,
        `cxrlake.metrics_service.review_agreement`, that the report and the Spark job run)."""
        return metrics_service.review_agreement(self.catalog)

    def image(self, image_id: str) -> tuple[bytes, str]:
        """The bytes of an image as scored (`source_bytes` when the adapter can read the source
        and they are unchanged since ingestion, else the copy kept in bronze); a DICOM film as
        the PNG the core renders (`servable_image`)."""
        rows = self.catalog.read(
            schemas.SILVER,
            ["image_id", "file_path", "content_sha256"],
            filter={"image_id": image_id},
        ).to_pylist()
        if not rows:
            raise ReviewError("unknown image", 404)
        row = rows[0]
        data = self.source_bytes(row["file_path"])
        if data is None or hashlib.sha256(data).hexdigest() != row["content_sha256"]:
            kept = self.catalog.read(
                schemas.BRONZE,
                ["content"],
                filter={"image_id": image_id, "content_sha256": row["content_sha256"]},
            )
            if kept.num_rows == 0:
                raise ReviewError("image bytes not found", 404)
            data = kept.column("content")[0].as_py()
        return servable_image(data)

    def source_bytes(self, file_path: str) -> bytes | None:
        """The source file's bytes when this store may read it (None: serve bronze's copy)."""
        return None

    # ------------------------------------------------------------------ writing
    def record_verdict(self, payload: Mapping[str, object], reviewer: str) -> tuple[Row, bool]:
        """Validate and append one verdict, then update the label history.

        Returns (row, created); the same verdict posted again under its ``feedback_id`` returns the
        stored row and writes nothing; another verdict under that id is refused (409).
        """
        reviewer, fields = checked_verdict(self, payload, reviewer)
        with self.write_lock():
            self._ensure(FEEDBACK)
            existing = self.catalog.read(FEEDBACK, filter={"feedback_id": fields["feedback_id"]})
            if existing.num_rows:
                return tables.repeated_verdict(existing.to_pylist()[0], fields, reviewer), False
            row = tables.feedback_row(fields, reviewer, tables.utc_now())
            self.catalog.append(
                FEEDBACK,
                pa.Table.from_pylist([row], schema=FEEDBACK.arrow_schema),
                operation="review-verdict",
            )
            self._sync_history_locked()
        return row, True

    def sync_history(self) -> int:
        """Bring silver.label_history up to date (folder labels, unapplied verdicts); history
        rows inserted."""
        with self.write_lock():
            return self._sync_history_locked()

    def _sync_history_locked(self) -> int:
        self._ensure(HISTORY)
        for attempt in range(self.history_attempts):
            change = history_change(self)
            if not change:
                return 0
            data = pa.Table.from_pylist(change.close + change.insert, schema=HISTORY.arrow_schema)
            try:
                self.catalog.merge(HISTORY, data, operation="review-label-history")
            except Exception:  # noqa: BLE001 - a concurrent merge by another writer
                if attempt == self.history_attempts - 1:
                    raise
                continue
            return len(change.insert)
        return 0

    def write_agreement(self) -> int:
        """Append the agreement figures when this set of verdicts is new; rows written."""
        with self.write_lock():
            self._ensure(AGREEMENT)
            rows = self.current_agreement()
            known = set(self.catalog.read(AGREEMENT, ["evaluation_id"]).column(0).to_pylist())
            new = [r for r in rows if r["evaluation_id"] not in known]
            return self.catalog.append(
                AGREEMENT,
                pa.Table.from_pylist(new, schema=AGREEMENT.arrow_schema),
                operation="review-agreement",
            )


__all__ = ["CatalogReviewStore", "checked_verdict", "history_change"]
