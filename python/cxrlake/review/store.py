"""Where the review app reads and writes: the local lakehouse (delta-rs) or, on Databricks, the
Unity Catalog tables through a SQL warehouse (`cxrlake.review.warehouse`).

Both implement the port `cxrlake.review.ports.ReviewStore`; every rule (validation, label
history, worklist, agreement) lives in `cxrlake.review.tables`, `cxrlake.review.worklist` and
`cxrlake.review.service` and runs unchanged on either.

Writes are serialised: one ``threading.Lock`` per store plus, locally, an exclusive ``flock`` on
``<catalog>/_cxrlake_review.lock`` (other processes serving the same lakehouse). A verdict is one
Delta commit to ``gold.prediction_feedback``; the label history is then brought up to date from
the feedback table in one MERGE commit. A crash between the two commits loses nothing: the next
write (or the next start) replays every verdict the history has not applied yet.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from cxrlake.lakehouse.catalog import LocalCatalog
from cxrlake.lakehouse.storage import Lakehouse
from cxrlake.medallion import schemas
from cxrlake.model import Model
from cxrlake.review import service, tables
from cxrlake.review.images import read_sandboxed, servable_image
from cxrlake.review.tables import AGREEMENT, FEEDBACK, HISTORY, ReviewError

REVIEW_LOCK = "_cxrlake_review.lock"
_PREDICTION_COLUMNS = [
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


def _eq(column: str, value: str) -> dict[str, str]:
    """``column = value`` as a `Lakehouse.read` filter."""
    return {column: value}


class LocalStore:
    """The review tables of a local lakehouse ``<root>/healthcare_catalog_<env>``."""

    engine = "local"

    def __init__(self, lakehouse: str | os.PathLike, env: str = "dev") -> None:
        self._where = (lakehouse, env)
        self._per_thread = threading.local()
        if not self.catalog.exists(schemas.PREDICTIONS):
            raise FileNotFoundError(
                f"no gold.pneumonia_predictions under {self.lh.catalog}: "
                "run `cxrlake pipeline run --lakehouse ...` first"
            )
        self._lock = threading.Lock()
        roots = [self.lh.root, *self.lh.recorded_sources()]
        self.roots = [os.path.realpath(r) for r in roots]
        self._threshold_cache: dict[tuple[str, str], float | None] = {}

    @property
    def catalog(self) -> LocalCatalog:
        """This thread's catalog (the port `cxrlake.catalog.Catalog`): its `Lakehouse` caches
        DeltaTable objects, which the server's request threads must not share."""
        catalog = getattr(self._per_thread, "catalog", None)
        if catalog is None:
            catalog = self._per_thread.catalog = LocalCatalog.at(*self._where)
        return catalog

    @property
    def lh(self) -> Lakehouse:
        """This thread's `Lakehouse` (its folders: the catalog, the recorded sources)."""
        return self.catalog.lakehouse

    # ------------------------------------------------------------------ reading
    def ensure_tables(self) -> None:
        """Create the review tables that do not exist yet (Change Data Feed on; the feedback
        table append-only)."""
        for spec in tables.REVIEW_TABLES:
            self._ensure(spec)

    def _ensure(self, spec: schemas.TableSpec) -> None:
        # a table of an earlier version gets the nullable columns it lacks
        # (label_history.content_sha256); its rows read them as null
        self.catalog.ensure(spec, tables.EXTRA_PROPERTIES.get(spec.name))

    def _thresholds(self) -> dict[tuple[str, str], float | None]:
        """Decision threshold per (model_name, model_version): the latest
        gold.model_performance row, else the shipped model's own threshold."""
        perf = self.catalog.read(
            schemas.PERFORMANCE, ["model_name", "model_version", "threshold", "evaluated_at"]
        ).to_pylist()
        out: dict[tuple[str, str], float | None] = {}
        for row in sorted(perf, key=lambda r: r["evaluated_at"]):
            if row["threshold"] is not None:
                out[(row["model_name"], row["model_version"])] = row["threshold"]
        return out

    def predictions(self) -> list[dict[str, Any]]:
        """Current predictions (their content hash is silver's) with quality score, threshold
        (the row's ``decision_threshold``, else the model's) and, when the table has one, the
        heatmap."""
        names = set(self.catalog.columns(schemas.PREDICTIONS))
        optional = [
            "heatmap",
            "decision_threshold",
            "threshold_source",
            "ood_score",
            "out_of_distribution",
            "ood_reason",
        ]
        columns = _PREDICTION_COLUMNS + [c for c in optional if c in names]
        preds = self.catalog.read(schemas.PREDICTIONS, columns).to_pylist()
        silver = {
            r["image_id"]: r
            for r in self.catalog.read(
                schemas.SILVER, ["image_id", "content_sha256", "quality_score"]
            ).to_pylist()
        }
        thresholds = self._thresholds()
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

    def _model_threshold(self, name: str, version: str) -> float | None:
        key = (name, version)
        if key not in self._threshold_cache:
            value = None
            try:
                model = Model()
                if (model.name, model.version) == key:
                    value = model.threshold
            except Exception:  # noqa: BLE001 - no model: the threshold is shown as unknown
                value = None
            self._threshold_cache[key] = value
        return self._threshold_cache[key]

    def prediction(self, prediction_id: str) -> dict[str, Any] | None:
        return next((p for p in self.predictions() if p["prediction_id"] == prediction_id), None)

    def folder_labels(self) -> dict[str, int | None]:
        rows = self.catalog.read(schemas.SILVER, ["image_id", "label"]).to_pylist()
        return {r["image_id"]: r["label"] for r in rows}

    def feedback(self, prediction_id: str | None = None) -> list[dict[str, Any]]:
        flt = None if prediction_id is None else _eq("prediction_id", prediction_id)
        return self.catalog.read(FEEDBACK, filter=flt).to_pylist()

    def label_history(self, image_id: str | None = None) -> list[dict[str, Any]]:
        flt = None if image_id is None else _eq("image_id", image_id)
        rows = self.catalog.read(HISTORY, filter=flt).to_pylist()
        return sorted(rows, key=lambda r: (r["image_id"], r["valid_from"]))

    def agreement(self) -> list[dict[str, Any]]:
        return self.catalog.read(AGREEMENT).to_pylist()

    def image(self, image_id: str) -> tuple[bytes, str]:
        """The bytes of an image as scored: the source file when it is inside the sandbox roots,
        a regular file and unchanged since ingestion, else (whatever the reason) the copy kept in
        bronze; a DICOM film as the PNG the core renders (`servable_image`)."""
        rows = self.catalog.read(
            schemas.SILVER,
            ["image_id", "file_path", "content_sha256"],
            filter=_eq("image_id", image_id),
        ).to_pylist()
        if not rows:
            raise ReviewError("unknown image", 404)
        row = rows[0]
        data = None
        try:
            data = read_sandboxed(row["file_path"], self.roots)
        except ReviewError:
            # Missing, moved outside the roots (a symlink swapped in), not a regular file: the
            # bytes kept in bronze are the ones scored, so they are served instead.
            data = None
        if data is None or hashlib.sha256(data).hexdigest() != row["content_sha256"]:
            kept = self.catalog.read(
                schemas.BRONZE,
                ["content"],
                filter=_eq("image_id", image_id) | _eq("content_sha256", row["content_sha256"]),
            )
            if kept.num_rows == 0:
                raise ReviewError("image bytes not found", 404)
            data = kept.column("content")[0].as_py()
        return servable_image(data)

    # ------------------------------------------------------------------ writing
    @contextmanager
    def write_lock(self) -> Iterator[None]:
        with self._lock:
            os.makedirs(self.lh.catalog, exist_ok=True)
            fd = os.open(os.path.join(self.lh.catalog, REVIEW_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def record_verdict(self, payload: Mapping[str, Any], reviewer: str) -> tuple[dict, bool]:
        """Validate and append one verdict, then update the label history.

        Returns (row, created); the same verdict posted again under its ``feedback_id`` returns the
        stored row and writes nothing; another verdict under that id is refused (409).
        """
        reviewer, fields = service.checked_verdict(self, payload, reviewer)
        with self.write_lock():
            self._ensure(FEEDBACK)
            existing = self.catalog.read(FEEDBACK, filter=_eq("feedback_id", fields["feedback_id"]))
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
        """Bring silver.label_history up to date (folder labels, unapplied verdicts)."""
        with self.write_lock():
            return self._sync_history_locked()

    def _sync_history_locked(self) -> int:
        self._ensure(HISTORY)
        change = service.history_change(self)
        if not change:
            return 0
        data = pa.Table.from_pylist(change.close + change.insert, schema=HISTORY.arrow_schema)
        self.catalog.merge(HISTORY, data, operation="review-label-history")
        return len(change.insert)

    def write_agreement(self) -> int:
        """Append the agreement figures when this set of verdicts is new; rows written."""
        with self.write_lock():
            self._ensure(AGREEMENT)
            rows = service.compute_agreement(self)
            known = set(self.catalog.read(AGREEMENT, ["evaluation_id"]).column(0).to_pylist())
            new = [r for r in rows if r["evaluation_id"] not in known]
            return self.catalog.append(
                AGREEMENT,
                pa.Table.from_pylist(new, schema=AGREEMENT.arrow_schema),
                operation="review-agreement",
            )
