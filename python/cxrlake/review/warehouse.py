"""The review store on Databricks: Unity Catalog tables through a SQL warehouse.

Used by the Databricks App (``bundle/apps/review``): the same server and rules as locally, with
reads and writes as SQL statements over ``databricks-sql-connector``. Connection as in the
Databricks Apps SQL warehouse example: the app's service principal credentials from
``databricks.sdk.core.Config()`` and the warehouse id that ``valueFrom: sql-warehouse`` puts into
``DATABRICKS_WAREHOUSE_ID``
(https://docs.databricks.com/aws/en/dev-tools/databricks-apps/app-runtime).

Values always travel as named parameter markers (``:name``); identifiers (catalog and schema
names) are validated against the patterns of `cxrlake.spark.sql_files` before they are put into
statement text. Writes are serialised per app instance; the label-history MERGE is retried on a
Delta concurrent-modification conflict with another instance.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cxrlake.review import service, tables
from cxrlake.review.images import servable_image
from cxrlake.review.tables import ReviewError

HISTORY_RETRIES = 3


def _validated(name: str, value: str) -> str:
    from cxrlake.spark.sql_files import validate_parameter

    return validate_parameter(name, value)


class WarehouseNames:
    """Fully qualified table names from the catalog and the schema names of the target."""

    def __init__(
        self, catalog: str, bronze: str = "bronze", silver: str = "silver", gold: str = "gold"
    ):
        c = _validated("catalog", catalog)
        b = _validated("bronze_schema", bronze)
        s = _validated("silver_schema", silver)
        g = _validated("gold_schema", gold)
        self.bronze = f"{c}.{b}.kaggle_xray_metadata"
        self.silver = f"{c}.{s}.xray_metadata"
        self.predictions = f"{c}.{g}.pneumonia_predictions"
        self.performance = f"{c}.{g}.model_performance"
        self.feedback = f"{c}.{g}.{tables.FEEDBACK.name}"
        self.history = f"{c}.{s}.{tables.HISTORY.name}"
        self.agreement = f"{c}.{g}.{tables.AGREEMENT.name}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WarehouseNames:
        env = os.environ if env is None else env
        return cls(
            env.get("CXRLAKE_CATALOG", "healthcare_catalog_dev"),
            env.get("CXRLAKE_BRONZE_SCHEMA", "bronze"),
            env.get("CXRLAKE_SILVER_SCHEMA", "silver"),
            env.get("CXRLAKE_GOLD_SCHEMA", "gold"),
        )


def statements(n: WarehouseNames, with_heatmap: bool = True) -> dict[str, str]:
    """Every SQL statement the store runs (Databricks SQL; tests parse them with sqlglot)."""
    # a table written before the heatmap (or the OOD flag) existed is read without them
    heatmap = (
        ", p.heatmap, p.ood_score, p.out_of_distribution, p.ood_reason" if with_heatmap else ""
    )
    predictions = f"""
SELECT p.prediction_id, p.image_id, p.predicted_label, p.prediction_probability, p.true_label,
       p.model_name, p.model_version, p.dataset_split, p.content_sha256, s.quality_score,
       coalesce(p.decision_threshold, t.threshold) AS threshold, p.threshold_source{heatmap}
FROM {n.predictions} AS p
JOIN {n.silver} AS s ON s.image_id = p.image_id AND s.content_sha256 = p.content_sha256
LEFT JOIN (
  SELECT model_name, model_version, max_by(threshold, evaluated_at) AS threshold
  FROM {n.performance} GROUP BY model_name, model_version
) AS t ON t.model_name = p.model_name AND t.model_version = p.model_version"""
    return {
        "predictions": predictions,
        "prediction": predictions + "\nWHERE p.prediction_id = :prediction_id",
        "folder_labels": f"SELECT image_id, label FROM {n.silver}",
        "feedback": f"SELECT * FROM {n.feedback}",
        "feedback_of": f"SELECT * FROM {n.feedback} WHERE prediction_id = :prediction_id",
        "feedback_by_id": f"SELECT * FROM {n.feedback} WHERE feedback_id = :feedback_id",
        "history": f"SELECT * FROM {n.history}",
        "history_of": f"SELECT * FROM {n.history} WHERE image_id = :image_id",
        "agreement": f"SELECT * FROM {n.agreement}",
        "image": f"""
SELECT b.content FROM {n.bronze} AS b
JOIN {n.silver} AS s ON s.image_id = b.image_id AND s.content_sha256 = b.content_sha256
WHERE b.image_id = :image_id LIMIT 1""",
        "insert_feedback": f"""
INSERT INTO {n.feedback}
SELECT :feedback_id, :prediction_id, :image_id, :radiologist_id, :feedback_type,
       :correct_label, :confidence_level, :comments, CAST(:feedback_timestamp AS TIMESTAMP)
WHERE NOT EXISTS (SELECT 1 FROM {n.feedback} WHERE feedback_id = :feedback_id)""",
        "merge_history": f"""
MERGE INTO {n.history} AS t
USING (SELECT :image_id AS image_id, CAST(:label AS INT) AS label, :label_name AS label_name,
              :source AS source, :feedback_id AS feedback_id,
              CAST(:valid_from AS TIMESTAMP) AS valid_from,
              CAST(:valid_to AS TIMESTAMP) AS valid_to,
              CAST(:is_current AS BOOLEAN) AS is_current,
              :content_sha256 AS content_sha256) AS s
ON t.image_id = s.image_id AND t.valid_from = s.valid_from
WHEN MATCHED THEN UPDATE SET valid_to = s.valid_to, is_current = s.is_current
WHEN NOT MATCHED THEN INSERT *""",
        "insert_agreement": f"""
INSERT INTO {n.agreement}
SELECT :evaluation_id, :model_name, :model_version, CAST(:reviewed_predictions AS BIGINT),
       CAST(:verdicts AS BIGINT), CAST(:agreement_rate AS DOUBLE), CAST(:cohen_kappa AS DOUBLE),
       CAST(:accuracy_current_labels AS DOUBLE), CAST(:labels_corrected AS BIGINT), :per_reviewer,
       CAST(:evaluated_at AS TIMESTAMP), :feedback_fingerprint
WHERE NOT EXISTS (SELECT 1 FROM {n.agreement} WHERE evaluation_id = :evaluation_id)""",
    }


def connect_from_env() -> Any:
    """A databricks-sql-connector connection with the app's credentials."""
    from databricks import sql
    from databricks.sdk.core import Config

    cfg = Config()
    warehouse = os.environ.get("DATABRICKS_WAREHOUSE_ID")
    if not warehouse:
        raise RuntimeError("DATABRICKS_WAREHOUSE_ID is not set (app.yaml: valueFrom sql-warehouse)")
    return sql.connect(
        server_hostname=cfg.host,
        http_path=f"/sql/1.0/warehouses/{warehouse}",
        credentials_provider=lambda: cfg.authenticate,
    )


class WarehouseStore:
    """The port `cxrlake.review.ports.ReviewStore` over a DB-API connection (the same as
    `cxrlake.review.store.LocalStore` locally)."""

    engine = "databricks"

    def __init__(self, names: WarehouseNames, connect: Callable[[], Any] = connect_from_env):
        self.names = names
        self._connect = connect
        self._conn: Any = None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._heatmap: bool | None = None

    def _query(self, key: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        sql = statements(self.names, self._heatmap is not False)[key]
        with self._lock:
            if self._conn is None:
                self._conn = self._connect()
            with self._conn.cursor() as cur:
                cur.execute(sql, dict(params or {}))
                if cur.description is None:
                    return []
                cols = [d[0] for d in cur.description]
                return [
                    {c: _utc(v) for c, v in zip(cols, row, strict=True)} for row in cur.fetchall()
                ]

    def predictions(self) -> list[dict[str, Any]]:
        if self._heatmap is None:
            try:
                rows = self._query("predictions")
                self._heatmap = True
                return rows
            except Exception:  # noqa: BLE001 - a table without the heatmap column
                self._heatmap = False
        return self._query("predictions")

    def prediction(self, prediction_id: str) -> dict[str, Any] | None:
        if self._heatmap is None:
            self.predictions()  # finds out whether the table has the heatmap column
        rows = self._query("prediction", {"prediction_id": prediction_id})
        return rows[0] if rows else None

    def folder_labels(self) -> dict[str, int | None]:
        return {r["image_id"]: r["label"] for r in self._query("folder_labels")}

    def feedback(self, prediction_id: str | None = None) -> list[dict[str, Any]]:
        if prediction_id is None:
            return self._query("feedback")
        return self._query("feedback_of", {"prediction_id": prediction_id})

    def label_history(self, image_id: str | None = None) -> list[dict[str, Any]]:
        rows = (
            self._query("history")
            if image_id is None
            else self._query("history_of", {"image_id": image_id})
        )
        return sorted(rows, key=lambda r: (r["image_id"], r["valid_from"]))

    def agreement(self) -> list[dict[str, Any]]:
        return self._query("agreement")

    def image(self, image_id: str) -> tuple[bytes, str]:
        rows = self._query("image", {"image_id": image_id})
        if not rows:
            raise ReviewError("unknown image", 404)
        return servable_image(bytes(rows[0]["content"]))

    def record_verdict(self, payload: Mapping[str, Any], reviewer: str) -> tuple[dict, bool]:
        reviewer, fields = service.checked_verdict(self, payload, reviewer)
        with self._write_lock:
            existing = self._query("feedback_by_id", {"feedback_id": fields["feedback_id"]})
            if existing:
                return tables.repeated_verdict(existing[0], fields, reviewer), False
            row = tables.feedback_row(fields, reviewer, tables.utc_now())
            self._query("insert_feedback", _params(row))
            self._sync_history_locked()
        return row, True

    def sync_history(self) -> int:
        with self._write_lock:
            return self._sync_history_locked()

    def _sync_history_locked(self) -> int:
        for attempt in range(HISTORY_RETRIES):
            change = service.history_change(self)
            try:
                for row in change.close + change.insert:
                    self._query("merge_history", _params(row))
                return len(change.insert)
            except Exception:  # noqa: BLE001 - concurrent MERGE from another app instance
                if attempt == HISTORY_RETRIES - 1:
                    raise
        return 0

    def write_agreement(self) -> int:
        with self._write_lock:
            rows = service.compute_agreement(self)
            for row in rows:
                self._query("insert_agreement", _params(row))
            return len(rows)


def _utc(value: Any) -> Any:
    """TIMESTAMP values come back naive (in the session time zone, UTC for the app): make them
    timezone-aware so they compare with the app's own UTC timestamps."""
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def _params(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


__all__: Sequence[str] = ["WarehouseNames", "WarehouseStore", "connect_from_env", "statements"]
